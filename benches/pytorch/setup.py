"""Shared start of the PyTorch counterparts (fashion.py, char_lstm.py, gpt.py, transformer_block.py):
parses the common arguments (`--threads`, default 2, and `--seed`, default 0, plus the script's own), pins the thread count before torch is imported,
seeds torch, and finds shakespeare.txt the way the Rust side does (`--text`, `$FIREBRAND_DATA`,
../shared/data, data/)."""
import argparse, os, statistics, time


def start(add_args=lambda p: None):
    """Returns (args, torch) with threads set and torch seeded."""
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    add_args(p)
    a = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    return a, torch


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
    runs = []
    for _ in range(max(rounds, 1)):
        t0 = time.perf_counter()
        f()
        runs.append(1000 * (time.perf_counter() - t0))
    return statistics.median(runs)
