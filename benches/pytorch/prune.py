"""PyTorch counterpart of the `prune` workload: the seed MLP and CNN on Fashion-MNIST trained --epochs
(Adam 1e-3, batch 32), then
  * the MLP pruned with torch.nn.utils.prune.global_unstructured (L1) to 90% over 3 gradual steps
    (Zhu & Gupta's schedule), one epoch of fine-tuning after each, then prune.remove;
  * the CNN's two convolutions pruned with prune.ln_structured (n=1, dim=0) to half their output
    channels, fine-tuned --epochs, then prune.remove. PyTorch's masks remove nothing, so the layers keep
    their size: this is the speedup PyTorch's pruning gives.
One JSON line each, as `cargo bench --bench workloads -- prune`:
    {"workload": "prune", "lib": "torch", "model", "sparsity", "structured", "accuracy", "dense_accuracy",
     "speedup"}
Usage: python3 benches/pytorch/prune.py [--epochs 3] [--data DIR] [--threads 2] [--seed 0]
"""
import json, time

from setup import start
from fashion import accuracy, fit, images_per_s, load


def args(p):
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", default=None)


a, torch = start(args)
import torch.nn as nn
import torch.nn.utils.prune as prune


def line(model, sparsity, structured, acc, dense, speedup):
    print(json.dumps({"workload": "prune", "lib": "torch", "model": model, "sparsity": round(sparsity, 4),
                      "structured": structured, "accuracy": round(acc, 4), "dense_accuracy": round(dense, 4),
                      "speedup": round(speedup, 2)}), flush=True)


torch.manual_seed(a.seed)
xtr, ytr, xte, yte = load(a, torch, (784,))
mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
fit(mlp, xtr, ytr, a.epochs)
dense, dense_speed = accuracy(mlp, xte, yte), images_per_s(mlp, xte)
params = [(mlp[0], "weight"), (mlp[3], "weight")]
pruned = 0.0
for t in range(1, 4):
    target = 0.9 * (1 - (1 - t / 3) ** 3)
    # An int amount: how many more weights to prune, among those still unpruned.
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured,
                              amount=round((target - pruned) * (784 * 128 + 1280)))
    pruned = target
    fit(mlp, xtr, ytr, 1)
acc = accuracy(mlp, xte, yte)
for m, n in params:
    prune.remove(m, n)
zeros = sum((m.weight == 0).sum().item() for m, _ in params)
line("mlp", zeros / (784 * 128 + 1280), False, acc, dense, images_per_s(mlp, xte) / dense_speed)

torch.manual_seed(a.seed)
xtr, ytr, xte, yte = load(a, torch, (1, 28, 28))
cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 10))
fit(cnn, xtr, ytr, a.epochs)
dense, dense_speed = accuracy(cnn, xte, yte), images_per_s(cnn, xte)
for i in (0, 3):
    prune.ln_structured(cnn[i], "weight", amount=0.5, n=1, dim=0)
fit(cnn, xtr, ytr, a.epochs)
acc = accuracy(cnn, xte, yte)
for i in (0, 3):
    prune.remove(cnn[i], "weight")
total = sum(p.numel() for p in cnn.parameters())
zeros = sum((p == 0).sum().item() for p in cnn.parameters())
line("cnn", zeros / total, True, acc, dense, images_per_s(cnn, xte) / dense_speed)
