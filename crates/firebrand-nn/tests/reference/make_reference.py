"""Writes nn_reference.json: PyTorch values and gradients for the layer and loss
tests in ../nn_reference.rs.  Run here: python3 make_reference.py  (pip install torch)"""
import json, math
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def det(shape, scale=1.0, shift=0.0):
    n = math.prod(shape)
    return torch.tensor([math.sin(0.37 * i + 0.11) * scale + shift for i in range(n)]).reshape(shape)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


cases = {}
logits = det((4, 5), 2.0)
idx = torch.tensor([1, 4, 0, 2])
probs = torch.softmax(det((4, 5), 1.5, 0.2), dim=-1)
for name, fn in [
    ("ce_indices", lambda x: F.cross_entropy(x, idx)),
    ("ce_smoothing", lambda x: F.cross_entropy(x, idx, label_smoothing=0.1)),
    ("ce_probs", lambda x: F.cross_entropy(x, probs)),
    ("ce_probs_smoothing", lambda x: F.cross_entropy(x, probs, label_smoothing=0.2)),
    ("ce_sum", lambda x: F.cross_entropy(x, idx, reduction="sum")),
    ("nll", lambda x: F.nll_loss(torch.log_softmax(x, -1), idx)),
    ("mse", lambda x: F.mse_loss(x, det((4, 5), 0.5))),
    ("bce_logits", lambda x: F.binary_cross_entropy_with_logits(x, torch.sigmoid(det((4, 5), 3.0)))),
]:
    x = logits.clone().requires_grad_()
    loss = fn(x)
    loss.backward()
    cases[name] = {"loss": float(loss.detach()), "grad": flat(x.grad)}
cases["inputs"] = {"logits": flat(logits), "idx": idx.tolist(), "probs": flat(probs),
                   "mse_target": flat(det((4, 5), 0.5)), "bce_target": flat(torch.sigmoid(det((4, 5), 3.0)))}

# Linear(6 -> 3) with given weights, input (2, 6): y and grads of sum(y * w)
W = det((3, 6), 0.4).requires_grad_()
b = det((3,), 0.1).requires_grad_()
x = det((2, 6), 1.0, 0.3).requires_grad_()
y = F.linear(x, W, b)
wout = det((2, 3), 1.2)
(y * wout).sum().backward()
cases["linear"] = {"W": flat(W), "b": flat(b), "x": flat(x), "y": flat(y), "wout": flat(wout),
                   "gW": flat(W.grad), "gb": flat(b.grad), "gx": flat(x.grad)}

with open("nn_reference.json", "w") as f:
    json.dump({"torch_version": torch.__version__, "cases": cases}, f, indent=1)
print("wrote nn_reference.json, torch", torch.__version__)
