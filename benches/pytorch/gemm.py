"""NumPy and PyTorch counterparts of the `gemm` workload (see ../shared/bench/README.md).

Prints one JSON object per line, like `cargo bench --bench workloads -- gemm`:
    {"workload": "gemm", "lib": "torch", "m": ..., "k": ..., "n": ..., "gflops": ...}
Usage: python3 benches/pytorch/gemm.py [--threads 2] [--sizes 64,128,...] [--device cpu|cuda]
On cuda (torch only, `--libs torch`): fp32 with TF32 off, each timing waits for the GPU.
Set the thread count before importing NumPy (OpenBLAS reads it at load time).
"""
import argparse, json, os, sys, time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--sizes", default="64,128,256,512,1024,2048")
p.add_argument("--libs", default="numpy,torch")
p.add_argument("--device", default="cpu")
args = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np

shapes = [(s, s, s) for s in map(int, args.sizes.split(","))]
shapes += [(32, 784, 128), (128, 784, 128), (1024, 128, 512)]


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(fn, flops):
    fn(); sync()
    t = time.perf_counter(); fn(); sync(); once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, min(10000, int(0.06 / once + 0.999)))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        samples.append((time.perf_counter() - t) / reps)
    samples.sort()
    return flops / samples[len(samples) // 2] / 1e9


libs = args.libs.split(",")
if "torch" in libs:
    import torch
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
for m, k, n in shapes:
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32) - 0.5
    b = rng.random((k, n), dtype=np.float32) - 0.5
    flops = 2.0 * m * k * n
    if "numpy" in libs:
        c = np.empty((m, n), dtype=np.float32)
        g = bench(lambda: np.matmul(a, b, out=c), flops)
        print(json.dumps({"workload": "gemm", "lib": "numpy", "m": m, "k": k, "n": n, "gflops": round(g, 1)}), flush=True)
    if "torch" in libs:
        ta, tb = torch.from_numpy(a).to(args.device), torch.from_numpy(b).to(args.device)
        tc = torch.empty((m, n), dtype=torch.float32, device=args.device)
        g = bench(lambda: torch.matmul(ta, tb, out=tc), flops)
        print(json.dumps({"workload": "gemm", "lib": "torch", "m": m, "k": k, "n": n, "gflops": round(g, 1),
                          "device": args.device}), flush=True)
