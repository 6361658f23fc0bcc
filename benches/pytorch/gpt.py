"""PyTorch counterpart of the `gpt` workload (see ../shared/bench/README.md and benches/workloads.rs).

Character-level GPT on the whole corpus (vocabulary: every character, sorted; first 90% of the
characters train, the last 10% validate): token embedding + learned positions, 4 blocks of
nn.TransformerEncoderLayer(128, 4 heads, feed-forward 512, GELU, pre-norm, no dropout, causal
mask), final LayerNorm, bias-free head; GPT-2 initialization (N(0, 0.02), residual projections
N(0, 0.02/sqrt(2L)), zero biases) as Firebrand's `Gpt`. AdamW 1e-3, betas 0.9/0.99, weight
decay 0.1 on matrices only, warm-up 100, cosine to 1e-4 at 2000, global-norm clip 1.0, batch 12
random windows of 64. Every 500 iterations and at the end prints
    {"workload": "gpt", "lib": "torch", "iter": ..., "val_loss": ..., "train_loss": ..., "ms_per_iter": ...}
val_loss: mean over the same 1,200 evenly spaced validation windows as the Rust side;
train_loss: mean of the last 100 iterations; ms_per_iter: training only, mean so far.
Usage: python3 benches/pytorch/gpt.py [--text FILE] [--iters 2000] [--threads 2] [--seed 0] [--device cpu|cuda]
"""
import json, math, time

from setup import shakespeare, start, sync


def args(p):
    p.add_argument("--text", default=None)
    p.add_argument("--iters", type=int, default=2000)


a, torch = start(args)
nn, F = torch.nn, torch.nn.functional

text = shakespeare(a.text)
vocab = sorted(set(text))
stoi = {c: i for i, c in enumerate(vocab)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n_train = int(0.9 * len(data))
train, val = data[:n_train], data[n_train:]
V, T, B, C, L, H = len(vocab), 64, 12, 128, 4, 4

span = len(val) - T - 1
starts = torch.tensor([i * span // 1200 for i in range(1200)])
offsets = torch.arange(T)
vx, vy = val[starts[:, None] + offsets].to(a.device), val[starts[:, None] + offsets + 1].to(a.device)


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        # An embedding table (initialized below, so `_weight` spares a draw) so the
        # names are Firebrand's `Gpt`'s and a state_dict loads there as it is.
        self.wpe = nn.Embedding(T, C, _weight=torch.zeros(T, C))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(C, H, 4 * C, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T), persistent=False)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("out_proj.weight") or name.endswith("linear2.weight"):
                    p.normal_(0.0, 0.02 / math.sqrt(2 * L))
                elif p.dim() == 2:
                    p.normal_(0.0, 0.02)
                elif name.endswith("bias"):
                    p.zero_()

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:t]
        for blk in self.blocks:
            x = blk(x, src_mask=self.mask[:t, :t], is_causal=True)
        return self.lm_head(self.ln_f(x))


model = Gpt().to(a.device)
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, betas=(0.9, 0.99), eps=1e-8)


def lr_at(t, base=1e-3, warmup=100, total=2000, min_lr=1e-4):
    if t < warmup:
        return base * (t + 1) / warmup
    if t >= total:
        return min_lr
    progress = (t - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * progress))


def loss_of(x, y):
    return F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))


gen = torch.Generator().manual_seed(a.seed)
train_secs, recent = 0.0, []
for it in range(a.iters):
    t0 = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    ix = torch.randint(len(train) - T, (B,), generator=gen)
    x, y = train[ix[:, None] + offsets].to(a.device), train[ix[:, None] + offsets + 1].to(a.device)
    loss = loss_of(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    l = loss.item()
    sync()
    train_secs += time.perf_counter() - t0
    recent = (recent + [l])[-100:]
    if (it + 1) % 500 == 0 or it + 1 == a.iters:
        model.eval()
        with torch.no_grad():
            val_loss = sum(loss_of(vx[12 * b:12 * b + 12], vy[12 * b:12 * b + 12]).item() for b in range(100)) / 100
        model.train()
        print(json.dumps({"workload": "gpt", "lib": "torch", "iter": it + 1, "val_loss": round(val_loss, 4),
                          "train_loss": round(sum(recent) / len(recent), 4),
                          "ms_per_iter": round(1000 * train_secs / (it + 1), 2), "device": a.device}), flush=True)
