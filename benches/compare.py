#!/usr/bin/env python3
"""Runs a workload in Firebrand and in its NumPy/PyTorch counterpart, in the
same session, and prints both figures and their ratio.

    python3 benches/compare.py gemm [--threads 2] [--rounds 3]
    python3 benches/compare.py mlp [--epochs 5] [--data DIR]
    python3 benches/compare.py cnn [--epochs 5] [--data DIR] [--seed 0]
    python3 benches/compare.py char_lstm [--seed 0]
    python3 benches/compare.py gpt [--iters 2000] [--seed 0]
    python3 benches/compare.py transformer_block [--rounds 10] [--seed 0]
    python3 benches/compare.py mobilenet_v2 [--rounds 3]   (needs torchvision: see benches/pytorch/mobilenet_v2.py)
    python3 benches/compare.py minilm_embed|minilm_finetune|llm_generate [--matmul-precision medium]
                               (the real checkpoints, as .ci/run fetches them; pip install transformers)
    python3 benches/compare.py int8_gemm
    python3 benches/compare.py llm_generate_q4   (ours on SmolLM2's Q4_1 blocks against llama.cpp itself:
                               CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python)
    python3 benches/compare.py prune [--epochs 3]
    python3 benches/compare.py cnn_int8 [--epochs 5]   (static int8 against torch.ao.quantization's eager mode)

Each round runs Firebrand's runner (`cargo bench --bench workloads -- gemm`) and
then `benches/pytorch/gemm.py`; per shape the best of the rounds is kept for
each side (the machine is shared, so the best is the least disturbed figure).
NumPy's OpenBLAS is run with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset, so it
picks the kernel for this CPU.  Prints a Markdown table and, with --json, the
raw rows.
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["gemm", "mlp", "cnn", "char_lstm", "gpt", "transformer_block", "mobilenet_v2",
                                        "minilm_embed", "minilm_finetune", "llm_generate", "int8_gemm",
                                        "llm_generate_q4", "prune", "cnn_int8"])
    p.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.workload in ("mlp", "cnn"):
        return compare_classifier(a)
    if a.workload == "char_lstm":
        return compare_char_lstm(a)
    if a.workload == "gpt":
        return compare_gpt(a)
    if a.workload == "transformer_block":
        return compare_transformer_block(a)
    if a.workload == "mobilenet_v2":
        return compare_mobilenet(a)
    if a.workload == "llm_generate_q4":
        return compare_llamacpp(a)
    if a.workload == "prune":
        return compare_prune(a)
    if a.workload == "cnn_int8":
        return compare_cnn_int8(a)
    if a.workload in FIELDS:
        return compare_fields(a)
    best = {}
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run"], cwd=ROOT, check=True, capture_output=True)
    peak = run(["cargo", "bench", "--bench", "workloads", "--", "peak", "--threads", str(a.threads)])[0]["gflops"]
    for _ in range(a.rounds):
        rows = run(["cargo", "bench", "--bench", "workloads", "--", "gemm", "--threads", str(a.threads)])
        rows += run([sys.executable, "benches/pytorch/gemm.py", "--threads", str(a.threads)], env=env)
        for r in rows:
            key = (r.get("lib", "firebrand"), r["m"], r["k"], r["n"])
            best[key] = max(best.get(key, 0.0), r["gflops"])
    shapes = sorted({k[1:] for k in best}, key=lambda s: (s[0] != s[1] or s[1] != s[2], s))
    print(f"FMA peak ({a.threads} threads): {peak:.0f} GFLOP/s\n")
    print("| m x k x n | Firebrand | NumPy | PyTorch | vs NumPy | vs PyTorch | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for m, k, n in shapes:
        f, np_, pt = (best.get((lib, m, k, n), float("nan")) for lib in ("firebrand", "numpy", "torch"))
        print(f"| {m}x{k}x{n} | {f:.0f} | {np_:.0f} | {pt:.0f} | {f/np_:.2f} | {f/pt:.2f} | {100*f/peak:.0f}% |")
    if a.json:
        for key, g in sorted(best.items()):
            print(json.dumps({"lib": key[0], "m": key[1], "k": key[2], "n": key[3], "gflops": g}))


def compare_char_lstm(a):
    """One epoch of the character LSTM on each side: samples per second and validation loss."""
    extra = ["--seed", str(a.seed)]
    subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run"], cwd=ROOT, check=True, capture_output=True)
    ours = run(["cargo", "bench", "--bench", "workloads", "--", "char_lstm", "--threads", str(a.threads)] + extra)[0]
    theirs = run([sys.executable, "benches/pytorch/char_lstm.py", "--threads", str(a.threads)] + extra)[0]
    print("| | Firebrand | PyTorch | ratio |")
    print("|---|---|---|---|")
    print(f"| samples/s | {ours['samples_per_second']:.0f} | {theirs['samples_per_second']:.0f} | "
          f"{ours['samples_per_second'] / theirs['samples_per_second']:.2f}x |")
    print(f"| epoch s | {ours['train_seconds']:.1f} | {theirs['train_seconds']:.1f} | |")
    print(f"| validation loss | {ours['val_loss']:.4f} | {theirs['val_loss']:.4f} | "
          f"{ours['val_loss'] - theirs['val_loss']:+.4f} |")
    if a.json:
        print(json.dumps(ours))
        print(json.dumps(theirs))


def both(a, name, extra):
    """Our runner's and the PyTorch script's JSON lines for one workload."""
    subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run"], cwd=ROOT, check=True, capture_output=True)
    ours = run(["cargo", "bench", "--bench", "workloads", "--", name, "--threads", str(a.threads)] + extra)
    theirs = run([sys.executable, f"benches/pytorch/{name}.py", "--threads", str(a.threads)] + extra)
    if a.json:
        for r in ours + theirs:
            print(json.dumps(r))
    return ours, theirs


def compare_gpt(a):
    """The character-level GPT: validation loss and ms per iteration at each report."""
    ours, theirs = both(a, "gpt", ["--iters", str(a.iters), "--seed", str(a.seed)])
    print("| iteration | Firebrand ms/iter | PyTorch ms/iter | speed-up | Firebrand val loss | PyTorch val loss | difference |")
    print("|---|---|---|---|---|---|---|")
    for f, t in zip(ours, theirs):
        print(f"| {f['iter']} | {f['ms_per_iter']:.2f} | {t['ms_per_iter']:.2f} | {t['ms_per_iter'] / f['ms_per_iter']:.2f}x "
              f"| {f['val_loss']:.4f} | {t['val_loss']:.4f} | {f['val_loss'] - t['val_loss']:+.4f} |")


def compare_transformer_block(a):
    """Two encoder layers at d_model 512 on (8, 128, 512): forward and forward + backward."""
    ours, theirs = both(a, "transformer_block", ["--rounds", str(a.rounds * 3 + 1), "--seed", str(a.seed)])
    f, t = ours[0], theirs[0]
    print("| | Firebrand ms | PyTorch ms | speed-up |")
    print("|---|---|---|---|")
    for key in ("forward_ms", "forward_backward_ms"):
        print(f"| {key[:-3].replace('_', ' + ')} | {f[key]:.2f} | {t[key]:.2f} | {t[key] / f[key]:.2f}x |")


def compare_mobilenet(a):
    """torchvision's MobileNetV2 at 224x224: inference images/s at batch 1 and 16, a training step at 16."""
    ours, theirs = both(a, "mobilenet_v2", ["--rounds", str(a.rounds * 2 + 1)])
    print("| measurement | Firebrand | PyTorch | speed-up | Firebrand MiB | PyTorch MiB |")
    print("|---|---|---|---|---|---|")
    for f, t in zip(ours, theirs):
        if f["mode"] == "inference":
            print(f"| inference, batch {f['batch']} (images/s) | {f['images_per_second']:.1f} | {t['images_per_second']:.1f} "
                  f"| {f['images_per_second'] / t['images_per_second']:.2f}x | {f['peak_rss_mb']} | {t['peak_rss_mb']} |")
        else:
            print(f"| training step, batch 16 (ms) | {f['train_step_ms']:.1f} | {t['train_step_ms']:.1f} "
                  f"| {t['train_step_ms'] / f['train_step_ms']:.2f}x | {f['peak_rss_mb']} | {t['peak_rss_mb']} |")


# The figures each side prints.
FIELDS = {
    "minilm_embed": ["sentences_per_s"],
    "minilm_finetune": ["epoch_seconds", "test_accuracy"],
    "llm_generate": ["prompt_tokens_per_s", "tokens_per_s"],
    "int8_gemm": ["int8_gops", "fp32_gflops"],
}


def compare_fields(a):
    """The pretrained-model workloads and int8_gemm: each field side by side, per row (per shape for
    int8_gemm), both at the same --matmul-precision."""
    ours, theirs = both(a, a.workload, ["--matmul-precision", a.matmul_precision])
    print(f"matmul precision: {a.matmul_precision}")
    print("| row | figure | Firebrand | PyTorch | Firebrand / PyTorch |")
    print("|---|---|---|---|---|")
    for f, t in zip(ours, theirs):
        row = f"{f['m']}x{f['k']}x{f['n']}" if "m" in f else a.workload
        for key in FIELDS[a.workload]:
            print(f"| {row} | {key} | {f[key]} | {t[key]} | {f[key] / t[key]:.2f}x |")


def compare_llamacpp(a):
    """SmolLM2 on its own Q4_1 blocks: our `llm_generate --quantized` against llama.cpp, alternating rounds."""
    subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run"], cwd=ROOT, check=True, capture_output=True)
    rows = []
    for _ in range(max(1, a.rounds)):
        f = run(["cargo", "bench", "--bench", "workloads", "--", "llm_generate", "--quantized", "--rounds", "3",
                 "--threads", str(a.threads)])[-1]
        t = run([sys.executable, "benches/pytorch/llm_generate_llamacpp.py", "--rounds", "3",
                 "--threads", str(a.threads)])[-1]
        rows.append((f, t))
    print("| round | figure | Firebrand | llama.cpp | Firebrand / llama.cpp |")
    print("|---|---|---|---|---|")
    for i, (f, t) in enumerate(rows, 1):
        for key in FIELDS["llm_generate"]:
            print(f"| {i} | {key} | {f[key]} | {t[key]} | {f[key] / t[key]:.2f}x |")
    if a.json:
        for f, t in rows:
            print(json.dumps(f))
            print(json.dumps(t))


def compare_prune(a):
    """Pruning: accuracy against dense and inference speedup, per model, each side."""
    ours, theirs = both(a, "prune", ["--epochs", str(a.epochs if a.epochs != 5 else 3), "--seed", str(a.seed)]
                        + (["--data", a.data] if a.data else []))
    print("| model | side | sparsity | structured | accuracy | dense accuracy | speedup |")
    print("|---|---|---|---|---|---|---|")
    for side, rows in (("Firebrand", ours), ("PyTorch", theirs)):
        for r in rows:
            print(f"| {r['model']} | {side} | {r['sparsity']} | {r['structured']} | {100 * r['accuracy']:.2f}% "
                  f"| {100 * r['dense_accuracy']:.2f}% | {r['speedup']:.2f}x |")


def compare_cnn_int8(a):
    """Static int8 on the seed CNN: accuracy, images/s and file bytes, fp32 and int8, each side."""
    ours, theirs = both(a, "cnn_int8", ["--epochs", str(a.epochs), "--seed", str(a.seed)]
                        + (["--data", a.data] if a.data else []))
    print("| side | fp32 accuracy | int8 accuracy | fp32 images/s | int8 images/s | int8 / fp32 | fp32 bytes | int8 bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for side, rows in (("Firebrand", ours), ("PyTorch", theirs)):
        for r in rows:
            print(f"| {side} | {100 * r['fp32_accuracy']:.2f}% | {100 * r['int8_accuracy']:.2f}% "
                  f"| {r['fp32_images_per_s']:,.0f} | {r['int8_images_per_s']:,.0f} | {r['speedup']:.2f}x "
                  f"| {r['fp32_bytes']:,} | {r['int8_bytes']:,} |")
    if ours and theirs:
        print(f"\nint8 images/s, Firebrand / PyTorch: {ours[0]['int8_images_per_s'] / theirs[0]['int8_images_per_s']:.2f}x")


def compare_classifier(a):
    """mlp and cnn: Fashion-MNIST classifiers, one JSON line per epoch from each side."""
    extra = ["--epochs", str(a.epochs), "--seed", str(a.seed)] + (["--data", a.data] if a.data else [])
    subprocess.run(["cargo", "bench", "--bench", "workloads", "--no-run"], cwd=ROOT, check=True, capture_output=True)
    ours = run(["cargo", "bench", "--bench", "workloads", "--", a.workload, "--threads", str(a.threads)] + extra)
    theirs = run([sys.executable, f"benches/pytorch/{a.workload}.py", "--threads", str(a.threads)] + extra)
    print("| epoch | Firebrand s | PyTorch s | speed-up | Firebrand acc | PyTorch acc | Firebrand MiB | PyTorch MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for f, t in zip(ours, theirs):
        print(f"| {f['epoch']} | {f['train_seconds']:.3f} | {t['train_seconds']:.3f} | {t['train_seconds'] / f['train_seconds']:.2f}x "
              f"| {100 * f['test_accuracy']:.2f}% | {100 * t['test_accuracy']:.2f}% | {f['peak_rss_mb']} | {t['peak_rss_mb']} |")
    fs = sum(r["train_seconds"] for r in ours) / len(ours)
    ts = sum(r["train_seconds"] for r in theirs) / len(theirs)
    print(f"\nmean epoch: Firebrand {fs:.3f} s, PyTorch {ts:.3f} s, speed-up {ts / fs:.2f}x; "
          f"final test accuracy {100 * ours[-1]['test_accuracy']:.2f}% vs {100 * theirs[-1]['test_accuracy']:.2f}%")
    if a.json:
        for r in ours + theirs:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
