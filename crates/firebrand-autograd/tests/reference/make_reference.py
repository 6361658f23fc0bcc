"""Writes pytorch_reference.json: inputs, outputs and gradients computed by PyTorch
for the value tests in ../pytorch_reference.rs.

Run from this directory:  python3 make_reference.py   (needs `pip install torch`)
Inputs are deterministic (a fixed formula), so the file only changes with PyTorch.
"""
import json
import math

import torch

torch.set_default_dtype(torch.float64)  # reference values in double precision


def det(shape, scale=1.0, shift=0.0):
    n = math.prod(shape)
    vals = [math.sin(0.37 * i + 0.11) * scale + shift for i in range(n)]
    return torch.tensor(vals).reshape(shape)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


cases = {}

# matmul: 2-D, odd sizes
a, b = det((3, 5)), det((5, 4), 0.5)
cases["matmul_2d"] = {"a": flat(a), "a_shape": [3, 5], "b": flat(b), "b_shape": [5, 4], "out": flat(a @ b)}

# batched matmul with broadcast batch dims: (2, 1, 3, 4) @ (3, 4, 2) -> (2, 3, 3, 2), with grads of sum(out * w)
a = det((2, 1, 3, 4)).requires_grad_()
b = det((3, 4, 2), 0.7, 0.1).requires_grad_()
out = a @ b
w = det(tuple(out.shape), 1.3)
(out * w).sum().backward()
cases["matmul_batched"] = {
    "a": flat(a), "a_shape": [2, 1, 3, 4], "b": flat(b), "b_shape": [3, 4, 2],
    "out": flat(out), "out_shape": list(out.shape), "w": flat(w), "grad_a": flat(a.grad), "grad_b": flat(b.grad),
}

# softmax and log_softmax along dim 1 of a (2, 5, 3) tensor, with grads of sum(out * w)
for name, fn in [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)]:
    x = det((2, 5, 3), 4.0).requires_grad_()
    y = fn(x, dim=1)
    w = det((2, 5, 3), 1.0, 0.3)
    (y * w).sum().backward()
    cases[name] = {"x": flat(x), "shape": [2, 5, 3], "dim": 1, "w": flat(w), "out": flat(y), "grad_x": flat(x.grad)}

# composite: NLL of log_softmax(x W + b), mean over the batch
x = det((4, 6), 1.0)
W = det((6, 5), 0.4, -0.05).requires_grad_()
bias = det((5,), 0.2).requires_grad_()
target = torch.tensor([1, 4, 0, 3])
logp = torch.log_softmax(x @ W + bias, dim=-1)
loss = torch.nn.functional.nll_loss(logp, target)
loss.backward()
cases["linear_log_softmax_nll"] = {
    "x": flat(x), "x_shape": [4, 6], "w": flat(W), "w_shape": [6, 5], "b": flat(bias),
    "target": target.tolist(), "logp": flat(logp), "loss": float(loss.detach()), "grad_w": flat(W.grad), "grad_b": flat(bias.grad),
}

# unary ops whose formulas differ between libraries
x = det((7,), 3.0)
cases["unary"] = {
    "x": flat(x),
    "gelu": flat(torch.nn.functional.gelu(x)),
    "gelu_tanh": flat(torch.nn.functional.gelu(x, approximate="tanh")),
    "silu": flat(torch.nn.functional.silu(x)),
    "softplus": flat(torch.nn.functional.softplus(x)),
}

# var / std (unbiased) over dim 0 of (5, 3)
x = det((5, 3), 2.0)
cases["var_std"] = {"x": flat(x), "shape": [5, 3], "var0": flat(x.var(dim=0)), "std1_biased": flat(x.std(dim=1, correction=0))}

with open("pytorch_reference.json", "w") as f:
    json.dump({"torch_version": torch.__version__, "cases": cases}, f, indent=1)
print("wrote pytorch_reference.json with", len(cases), "cases, torch", torch.__version__)
