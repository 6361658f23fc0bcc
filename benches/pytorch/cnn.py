"""PyTorch counterpart of the `cnn` workload (see ../shared/bench/README.md).

Fashion-MNIST (1, 28, 28) -> Conv2d(1->32, 3x3, pad 1) + ReLU -> MaxPool 2 -> Conv2d(32->64, 3x3, pad 1)
+ ReLU -> MaxPool 2 -> Flatten -> Linear(3136 -> 10), cross-entropy, Adam 1e-3, batch 32, shuffled, pixels
scaled to [0, 1], 2 threads. Prints one JSON object per epoch, like `cargo bench --bench workloads -- cnn`:
    {"workload": "cnn", "lib": "torch", "epoch": 1, "train_seconds": ..., "test_accuracy": ..., "peak_rss_mb": ...}
Usage: python3 benches/pytorch/cnn.py [--epochs 5] [--data DIR] [--threads 2] [--seed 0]
"""
from fashion import run

run("cnn", (1, 28, 28), lambda nn: nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(3136, 10)))
