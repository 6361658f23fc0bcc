#!/bin/bash
# Prepares the GPU timing run (benches/gpu/run.sh) here, at no device time:
# builds the workload runner with the wgpu feature, strips it and puts it in
# .gpu/ with the Shakespeare corpus, and downloads the Vulkan/GL loader
# packages into .gl/ (the device machine has the NVIDIA driver but no
# loader). Both folders are kept out of git (.git/info/exclude) and go to
# the device through the run tool's `carry`: [".gpu", ".gl"].
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
mkdir -p .gpu .gl
cargo bench --features wgpu --bench workloads --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("executable") and "workloads" in m["executable"]]' \
  | tail -1 | xargs -I{} cp {} .gpu/workloads
strip .gpu/workloads
text="${FIREBRAND_DATA:-../shared/data}/shakespeare/shakespeare.txt"
cp "$text" .gpu/shakespeare.txt
if ! ls .gl/*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  apt-get $o update >/dev/null
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gpu .gl
