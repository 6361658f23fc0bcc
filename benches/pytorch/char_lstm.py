"""PyTorch counterpart of the `char_lstm` workload (see ../shared/bench/README.md).

The first 1,000,000 characters of shakespeare.txt (vocabulary: every character of
the whole file, sorted), windows of 40 characters with step 3 predicting the next
one; the first 90% of windows train, the last 10% validate. One-hot input ->
LSTM 128 (batch first) -> Linear to the vocabulary on the last step;
cross-entropy, Adam 1e-3, batch 128, shuffled, one epoch, 2 threads. Prints
    {"workload": "char_lstm", "lib": "torch", "samples_per_second": ..., "val_loss": ..., "train_seconds": ...}
Usage: python3 benches/pytorch/char_lstm.py [--text FILE] [--chars 1000000] [--epochs 1] [--threads 2] [--seed 0]
"""
import json, time

from setup import shakespeare, start


def args(p):
    p.add_argument("--text", default=None)
    p.add_argument("--chars", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=1)


a, torch = start(args)
import torch.nn.functional as F

text = shakespeare(a.text)
vocab = sorted(set(text))
stoi = {c: i for i, c in enumerate(vocab)}
V = len(vocab)
data = torch.tensor([stoi[c] for c in text[: a.chars]], dtype=torch.long)
WINDOW, STEP, BATCH = 40, 3, 128
starts = torch.arange(0, len(data) - WINDOW, STEP)
n_train = int(0.9 * len(starts))
train_starts, val_starts = starts[:n_train], starts[n_train:]
offsets = torch.arange(WINDOW)


def batch(s):
    x = data[s[:, None] + offsets[None, :]]
    return F.one_hot(x, V).float(), data[s + WINDOW]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(V, 128, batch_first=True)
        self.head = torch.nn.Linear(128, V)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(a.epochs):
    model.train()
    perm = train_starts[torch.randperm(len(train_starts))]
    t = time.perf_counter()
    for i in range(0, len(perm), BATCH):
        x, y = batch(perm[i:i + BATCH])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_starts), 1024):
            x, y = batch(val_starts[i:i + 1024])
            total += F.cross_entropy(model(x), y, reduction="sum").item()
            n += len(y)
    print(json.dumps({"workload": "char_lstm", "lib": "torch", "epoch": epoch + 1,
                      "samples_per_second": round(len(train_starts) / secs, 1), "val_loss": round(total / n, 4),
                      "train_seconds": round(secs, 2), "vocab": V}), flush=True)
