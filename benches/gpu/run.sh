#!/bin/bash
# The GPU timing run of issue 13, on the lent machine (an NVIDIA H200), as
# one call of the device tool after benches/gpu/prepare.sh:
#   run(command="bash benches/gpu/run.sh", carry=[".gpu", ".gl"], timeout_s=600)
# It times, on the same GPU and in the same run:
#   - fp32 matmul at 1024..8192: Firebrand on wgpu (Vulkan) against PyTorch
#     CUDA torch.matmul with TF32 off;
#   - the transformer_block and gpt workloads against PyTorch CUDA.
# Every figure is one JSON line under $OUT/ (and on stdout).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
export XDG_RUNTIME_DIR=/tmp/xdg && mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
W=.gpu/workloads
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
run() { # name, then the command; its JSON lines go to $OUT/name.jsonl, with a time limit each
  local name=$1; shift
  echo "== $name"
  timeout 150 "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.jsonl"
}
run firebrand_gemm $W gemm --device wgpu --sizes 1024,2048,4096,8192
run torch_gemm python3 benches/pytorch/gemm.py --libs torch --device cuda --sizes 1024,2048,4096,8192
run firebrand_transformer_block $W transformer_block --device wgpu --rounds 10
run torch_transformer_block python3 benches/pytorch/transformer_block.py --device cuda --rounds 10
run firebrand_gpt $W gpt --device wgpu --iters 200 --text .gpu/shakespeare.txt
run torch_gpt python3 benches/pytorch/gpt.py --device cuda --iters 200 --text .gpu/shakespeare.txt
