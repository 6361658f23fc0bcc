"""PyTorch counterpart of the `int8_gemm` workload: torch._int_mm (int8 x int8 -> int32, oneDNN; no
dequantization, which Firebrand's figure includes) and the float32 matmul on the same shapes, same run.
Prints one line per shape: {"workload": "int8_gemm", "lib": "torch", "m", "k", "n", "int8_gops",
"fp32_gflops"}, each the median of 5 timed batches after a warm-up.
Usage: python3 benches/pytorch/int8_gemm.py [--sizes 1024,4096x384x1536] [--threads 2]"""
import json, time

from setup import start


def args(p):
    p.add_argument("--sizes", default="1024,4096x384x1536,4096x1536x384")


a, torch = start(args)


def median_secs(run):
    run()
    t = time.perf_counter()
    run()
    reps = max(1, min(10000, int(0.06 / max(time.perf_counter() - t, 1e-7)) + 1))
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            run()
        samples.append((time.perf_counter() - t) / reps)
    return sorted(samples)[2]


for size in a.sizes.split(","):
    d = [int(v) for v in size.split("x")]
    m, k, n = d * 3 if len(d) == 1 else d
    ai = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    bi = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    af, bf = torch.randn(m, k), torch.randn(k, n)
    ops = 2.0 * m * k * n
    print(json.dumps({"workload": "int8_gemm", "lib": "torch", "m": m, "k": k, "n": n,
                      "int8_gops": round(ops / median_secs(lambda: torch._int_mm(ai, bi)) / 1e9, 1),
                      "fp32_gflops": round(ops / median_secs(lambda: af @ bf) / 1e9, 1)}), flush=True)
