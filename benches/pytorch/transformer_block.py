"""PyTorch counterpart of the `transformer_block` workload (see ../shared/bench/README.md):
2 nn.TransformerEncoderLayer(512, 8 heads, feed-forward 2048, dropout 0, batch first; post-norm
ReLU, PyTorch's defaults) on a (8, 128, 512) input. Prints
    {"workload": "transformer_block", "lib": "torch", "forward_ms": ..., "forward_backward_ms": ...}
each the median of --rounds runs after one warm-up. The forward pass runs in eval mode under
no_grad, so PyTorch may take its fused inference fast path (its best figure); forward + backward
runs in training mode, loss = mean of squares.
Usage: python3 benches/pytorch/transformer_block.py [--rounds 10] [--threads 2] [--seed 0] [--device cpu|cuda]
"""
import json

from setup import start, timed

a, torch = start(lambda p: p.add_argument("--rounds", type=int, default=10))
nn = torch.nn
layer = lambda: nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
enc = nn.Sequential(layer(), layer()).to(a.device)
x = torch.randn(8, 128, 512).to(a.device)


def fwd():
    enc.eval()
    with torch.no_grad():
        enc(x)
    enc.train()


def fwd_bwd():
    enc.zero_grad(set_to_none=True)
    enc(x).square().mean().backward()


print(json.dumps({"workload": "transformer_block", "lib": "torch", "forward_ms": round(timed(fwd, a.rounds), 2),
                  "forward_backward_ms": round(timed(fwd_bwd, a.rounds), 2), "device": a.device}), flush=True)
