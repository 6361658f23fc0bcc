"""Writes optim_reference.json: parameters after each of 5 steps of every
optimizer configuration in ../optim_reference.rs, computed by torch.optim in
float64.  Run here: python3 make_reference.py  (pip install torch)"""
import json, math
import torch

torch.set_default_dtype(torch.float64)


def det(shape, scale=1.0, shift=0.0):
    n = math.prod(shape)
    return torch.tensor([math.sin(0.37 * i + 0.11) * scale + shift for i in range(n)]).reshape(shape)


A = det((3, 5), 1.0)
b = det((3,), 0.5, 0.2)


def loss_fn(w, c):
    # mean((A w + c - b)^2) + 0.05 sum(w^4) + 0.1 sum(c^2)
    return ((A @ w + c - b) ** 2).mean() + 0.05 * (w ** 4).sum() + 0.1 * (c ** 2).sum()


configs = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "rmsprop_centered_momentum_wd": lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
}
out = {"w0": [float(v) for v in det((5,), 0.8).tolist()], "c0": [float(v) for v in det((3,), 0.3, -0.1).tolist()], "cases": {}}
for name, make in configs.items():
    w = det((5,), 0.8).clone().requires_grad_()
    c = det((3,), 0.3, -0.1).clone().requires_grad_()
    opt = make([w, c])
    steps = []
    for _ in range(5):
        opt.zero_grad()
        loss_fn(w, c).backward()
        opt.step()
        steps.append({"w": [float(v) for v in w.detach().tolist()], "c": [float(v) for v in c.detach().tolist()]})
    out["cases"][name] = steps
out["A"] = [float(v) for v in A.reshape(-1).tolist()]
out["b"] = [float(v) for v in b.tolist()]
with open("optim_reference.json", "w") as f:
    json.dump(out, f, indent=1)
print("wrote optim_reference.json, torch", torch.__version__)
