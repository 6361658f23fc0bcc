"""Shared start of the PyTorch counterparts (fashion.py, char_lstm.py, gpt.py, transformer_block.py):
parses the common arguments (`--threads`, default 2, `--seed`, default 0, and `--device`, default cpu
(cuda: TF32 off, timings wait for the GPU), and `--matmul-precision` (default highest; medium lets
float32 matmuls run in bf16 on AMX, as Firebrand's runner flag of the same name), plus the script's own), pins the thread count before torch is imported,
seeds torch, and finds shakespeare.txt the way the Rust side does (`--text`, `$FIREBRAND_DATA`,
../shared/data, data/)."""
import argparse, os, statistics, time


def start(add_args=lambda p: None):
    """Returns (args, torch) with threads set and torch seeded."""
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (fp32: TF32 off)")
    p.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision (medium: bf16 matmuls on AMX CPUs)")
    add_args(p)
    a = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.set_float32_matmul_precision(a.matmul_precision)
    if a.device.startswith("cuda"):
        # fp32 as fp32: the comparison with Firebrand's f32 kernels.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    global _sync
    _sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    return a, torch


_sync = lambda: None


def sync():
    """Waits for the GPU when the device is one (timings cover the work, not its queueing)."""
    _sync()


def shakespeare(explicit=None):
    cands = [explicit] if explicit else []
    if os.environ.get("FIREBRAND_DATA"):
        cands.append(os.path.join(os.environ["FIREBRAND_DATA"], "shakespeare", "shakespeare.txt"))
    cands += ["../shared/data/shakespeare/shakespeare.txt", "data/shakespeare/shakespeare.txt"]
    path = next((c for c in cands if c and os.path.isfile(c)), None)
    if path is None:
        raise SystemExit(f"shakespeare.txt not found in {cands}")
    return open(path, encoding="utf-8").read()


def timed(f, rounds):
    """The median of `rounds` timings of f() in ms, after one warm-up call (as the Rust runner's `median_ms`)."""
    f()
    sync()
    runs = []
    for _ in range(max(rounds, 1)):
        t0 = time.perf_counter()
        f()
        sync()
        runs.append(1000 * (time.perf_counter() - t0))
    return statistics.median(runs)
