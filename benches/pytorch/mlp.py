"""PyTorch counterpart of the `mlp` workload (see ../shared/bench/README.md).

Fashion-MNIST, 784 -> Linear 128 + ReLU -> Dropout 0.2 -> Linear 10, cross-entropy,
Adam 1e-3, batch 32, shuffled, pixels scaled to [0, 1], 2 threads. Prints one JSON
object per epoch, like `cargo bench --bench workloads -- mlp`:
    {"workload": "mlp", "lib": "torch", "epoch": 1, "train_seconds": ..., "test_accuracy": ..., "peak_rss_mb": ...}
Usage: python3 benches/pytorch/mlp.py [--epochs 5] [--data DIR] [--threads 2] [--seed 0]
"""
from fashion import run

run("mlp", (784,), lambda nn: nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)))
