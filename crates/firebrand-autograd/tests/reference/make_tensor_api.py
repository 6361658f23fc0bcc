"""Writes tensor_api_reference.json: PyTorch's values and gradients for the
tensor-API ops tested in ../tensor_api.rs, and its outputs for NaN and inf
through every elementwise op and reduction (the NaN/inf table).

Run from this directory:  python3 make_tensor_api.py   (needs `pip install torch`)
Inputs are deterministic (a fixed formula), so the file only changes with PyTorch.
"""
import json
import math

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def det(shape, scale=1.0, shift=0.0):
    n = math.prod(shape)
    vals = [math.sin(0.37 * i + 0.11) * scale + shift for i in range(n)]
    return torch.tensor(vals).reshape(shape)


def flat(t):
    return [float(v) if isinstance(v, float) or t.dtype.is_floating_point else int(v) for v in t.detach().reshape(-1).tolist()]


def enc(v):
    """JSON has no NaN/inf: write them as strings."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v


cases = {}


def case(name, x_shape, fn, scale=1.0, shift=0.0):
    """out = fn(x) and the gradient of sum(out * w) for a deterministic w."""
    x = det(x_shape, scale, shift).requires_grad_()
    out = fn(x)
    w = det(tuple(out.shape), 0.7, 0.2)
    (out * w).sum().backward()
    cases[name] = {"x": flat(x), "shape": list(x_shape), "out": flat(out), "out_shape": list(out.shape),
                   "w": flat(w), "grad": flat(x.grad)}


mask23 = det((2, 3)) > 0.2
case("masked_fill", (2, 3), lambda x: x.masked_fill(mask23, -1.5))
case("masked_select", (2, 3), lambda x: x.masked_select(mask23))
case("tril", (3, 4), lambda x: x.tril(0))
case("triu_1", (3, 4), lambda x: x.triu(1))
case("prod_dim1", (3, 4), lambda x: x.prod(1))
case("logsumexp_dim0", (3, 4), lambda x: x.logsumexp(0), scale=3.0)
case("norm2_dim1", (3, 4), lambda x: torch.linalg.vector_norm(x, 2, dim=1))
case("norm3_all", (3, 4), lambda x: torch.linalg.vector_norm(x, 3))
case("sort_desc_dim1", (3, 4), lambda x: x.sort(1, descending=True).values)
case("topk2_dim0", (3, 4), lambda x: x.topk(2, 0).values)
case("cumsum_dim1", (3, 4), lambda x: x.cumsum(1))
case("flip_01", (3, 4), lambda x: x.flip([0, 1]))
case("roll_2_dim1", (3, 4), lambda x: x.roll(2, 1))
case("repeat_2_1_3", (3, 2), lambda x: x.repeat(2, 1, 3))
case("expand", (3, 1), lambda x: x.expand(2, 3, 4))
case("pad_1_2_0_1", (2, 3), lambda x: F.pad(x, (1, 2, 0, 1), value=0.5))
case("index_1_m1", (3, 4, 5), lambda x: x[1:, -1, ::2])
case("einsum_bij_bjk", (2, 3, 4), lambda x: torch.einsum("bij,bjk->bik", x, det((2, 4, 2), 0.5)))
case("einsum_ij_ji", (3, 4), lambda x: torch.einsum("ij->ji", x))
case("bmm", (2, 3, 4), lambda x: torch.bmm(x, det((2, 4, 5), 0.3)))
case("pad_reflect_2_1_1_2", (1, 3, 4), lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"))
case("pad_replicate_3_0_0_2", (1, 3, 4), lambda x: F.pad(x, (3, 0, 0, 2), mode="replicate"))
case("relu6", (3, 4), F.relu6, scale=8.0, shift=1.0)
case("hardtanh_m2_3", (3, 4), lambda x: F.hardtanh(x, -2.0, 3.0), scale=5.0)
case("hardswish", (3, 4), F.hardswish, scale=5.0)
case("hardsigmoid", (3, 4), F.hardsigmoid, scale=5.0)
# The hard activations' gradients exactly at their kinks.
kinks = torch.tensor([-3.0, -1.0, 0.0, 3.0, 6.0, 7.0])
cases["kinks"] = {"x": flat(kinks)}
for name, fn in {"relu6": F.relu6, "hardtanh_m1_3": lambda x: F.hardtanh(x, -1.0, 3.0),
                 "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}.items():
    x = kinks.clone().requires_grad_()
    out = fn(x)
    out.sum().backward()
    cases["kinks"][name] = {"out": flat(out), "grad": flat(x.grad)}
cases["sort_indices"] = {"x": flat(det((3, 4))), "shape": [3, 4], "indices": flat(det((3, 4)).argsort(1, descending=True))}
cases["linspace"] = {"out": flat(torch.linspace(-1.0, 2.0, 7, dtype=torch.float32))}
cases["cumsum_int"] = {"out": flat(torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int32).cumsum(1))}

# The NaN/inf table: PyTorch's float32 outputs for special inputs.
special = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.5, 2.0], dtype=torch.float32)
pos = special  # log/sqrt of negatives give NaN in both
unary = {
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "recip": torch.reciprocal, "square": torch.square, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "relu": torch.relu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "softplus": F.softplus,
    "sin": torch.sin, "cos": torch.cos, "powf": lambda x: x.pow(2.5), "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "clamp": lambda x: x.clamp(-0.5, 0.7), "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.7),
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "affine": lambda x: x * -1.5 + 0.25,
}
table = {"input": [enc(v) for v in special.tolist()], "unary": {}, "binary": {}, "reduce": {}}
for name, fn in unary.items():
    table["unary"][name] = [enc(v) for v in fn(special).tolist()]
other = torch.tensor([1.0, float("nan"), 2.0, float("inf"), float("nan"), -1.0], dtype=torch.float32)
binary = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
          "maximum": torch.maximum, "minimum": torch.minimum}
for name, fn in binary.items():
    table["binary"][name] = [enc(v) for v in fn(special, other).tolist()]
table["other"] = [enc(v) for v in other.tolist()]
rows = torch.tensor([[1.0, float("nan"), 3.0], [float("-inf"), 2.0, float("inf")]], dtype=torch.float32)
table["rows"] = [enc(v) for v in rows.reshape(-1).tolist()]
reduce = {
    "sum": lambda x: x.sum(1), "mean": lambda x: x.mean(1), "prod": lambda x: x.prod(1),
    "max": lambda x: x.amax(1), "min": lambda x: x.amin(1), "argmax": lambda x: x.argmax(1).double(),
    "argmin": lambda x: x.argmin(1).double(), "logsumexp": lambda x: x.logsumexp(1),
    "softmax": lambda x: x.softmax(1), "log_softmax": lambda x: x.log_softmax(1), "cumsum": lambda x: x.cumsum(1),
    "max_pool": lambda x: F.max_pool1d(x.unsqueeze(0), 3).squeeze(0).reshape(-1),
}
for name, fn in reduce.items():
    table["reduce"][name] = [enc(v) for v in fn(rows).reshape(-1).tolist()]

with open("tensor_api_reference.json", "w") as f:
    json.dump({"torch_version": torch.__version__, "cases": cases, "nan_table": table}, f, indent=1)
