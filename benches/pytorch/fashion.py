"""Shared body of the Fashion-MNIST PyTorch counterparts (`mlp.py`, `cnn.py`): arguments,
data (IDX files found like the Rust side does), the training loop (Adam 1e-3, batch 32,
shuffled, cross-entropy, pixels in [0, 1]) and one JSON object per epoch:
    {"workload": ..., "lib": "torch", "epoch": 1, "train_seconds": ..., "train_loss": ...,
     "test_accuracy": ..., "peak_rss_mb": ...}
"""
import gzip, json, os, resource, struct, time

from setup import start


def run(workload, image_shape, make_model):
    """Trains `make_model(torch.nn)` on images reshaped to `image_shape` per example."""

    def args(p):
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--data", default=None)

    a, torch = start(args)
    xtr, ytr, xte, yte = load(a, torch, image_shape)

    model = make_model(torch.nn)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=32, shuffle=True)

    for epoch in range(1, a.epochs + 1):
        model.train()
        t = time.perf_counter()
        total, n = 0.0, 0
        for x, y in loader:
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
        secs = time.perf_counter() - t
        model.eval()
        with torch.no_grad():
            correct = sum((model(xte[i:i + 1000]).argmax(-1) == yte[i:i + 1000]).sum().item()
                          for i in range(0, len(yte), 1000))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"workload": workload, "lib": "torch", "epoch": epoch, "train_seconds": round(secs, 3),
                          "train_loss": round(total / n, 4), "test_accuracy": round(correct / len(yte), 4),
                          "peak_rss_mb": round(peak)}), flush=True)


def load(a, torch, image_shape):
    """Fashion-MNIST as tensors (train x, train y, test x, test y), images reshaped to `image_shape`
    per example, pixels in [0, 1]; found in `a.data`, $FIREBRAND_DATA or the standard places."""
    import numpy as np

    def find_dir():
        cands = [a.data] if a.data else []
        if os.environ.get("FIREBRAND_DATA"):
            cands += [os.path.join(os.environ["FIREBRAND_DATA"], "fashion-mnist"), os.environ["FIREBRAND_DATA"]]
        cands += ["/usr/share/datasets/fashion-mnist", "../shared/data/fashion-mnist", "data/fashion-mnist"]
        for d in cands:
            if d and any(os.path.isfile(os.path.join(d, "train-images-idx3-ubyte" + ext)) for ext in ("", ".gz")):
                return d
        raise SystemExit(f"Fashion-MNIST not found in {cands}")

    def read_idx(d, stem):
        path = os.path.join(d, stem)
        raw = gzip.open(path + ".gz").read() if os.path.exists(path + ".gz") else open(path, "rb").read()
        nd = raw[3]
        dims = struct.unpack(">" + "I" * nd, raw[4:4 + 4 * nd])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)

    d = find_dir()
    images = lambda stem: torch.from_numpy(read_idx(d, stem).reshape(-1, *image_shape).astype(np.float32) / 255.0)
    labels = lambda stem: torch.from_numpy(read_idx(d, stem).astype(np.int64))
    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


def fit(model, x, y, epochs):
    """Adam 1e-3, batch 32, shuffled, cross-entropy: the runner's `fit` for the compression workloads."""
    import torch
    nn = torch.nn
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()


def accuracy(model, x, y):
    """Test accuracy in evaluation mode, batches of 1000."""
    import torch
    model.eval()
    with torch.no_grad():
        return sum((model(x[i:i + 1000]).argmax(-1) == y[i:i + 1000]).sum().item() for i in range(0, len(y), 1000)) / len(y)


def images_per_s(model, x):
    """Inference images/s over `x` in batches of 1000, the best of three passes after a warm-up."""
    import torch
    model.eval()
    best = 0.0
    with torch.no_grad():
        for i in range(4):
            t = time.perf_counter()
            for j in range(0, len(x), 1000):
                model(x[j:j + 1000])
            if i:
                best = max(best, len(x) / (time.perf_counter() - t))
    return best
