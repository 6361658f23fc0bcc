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
idx_ignore = torch.tensor([1, -100, 0, 2])  # PyTorch's default ignore_index
probs = torch.softmax(det((4, 5), 1.5, 0.2), dim=-1)
for name, fn in [
    ("ce_indices", lambda x: F.cross_entropy(x, idx)),
    ("ce_smoothing", lambda x: F.cross_entropy(x, idx, label_smoothing=0.1)),
    ("ce_probs", lambda x: F.cross_entropy(x, probs)),
    ("ce_probs_smoothing", lambda x: F.cross_entropy(x, probs, label_smoothing=0.2)),
    ("ce_sum", lambda x: F.cross_entropy(x, idx, reduction="sum")),
    ("nll", lambda x: F.nll_loss(torch.log_softmax(x, -1), idx)),
    ("ce_ignore", lambda x: F.cross_entropy(x, idx_ignore)),
    ("ce_ignore_smoothing", lambda x: F.cross_entropy(x, idx_ignore, label_smoothing=0.1)),
    ("ce_ignore_sum", lambda x: F.cross_entropy(x, idx_ignore, reduction="sum")),
    ("nll_ignore", lambda x: F.nll_loss(torch.log_softmax(x, -1), idx_ignore)),
    ("mse", lambda x: F.mse_loss(x, det((4, 5), 0.5))),
    ("bce_logits", lambda x: F.binary_cross_entropy_with_logits(x, torch.sigmoid(det((4, 5), 3.0)))),
]:
    x = logits.clone().requires_grad_()
    loss = fn(x)
    loss.backward()
    cases[name] = {"loss": float(loss.detach()), "grad": flat(x.grad)}
cases["inputs"] = {"logits": flat(logits), "idx": idx.tolist(), "idx_ignore": idx_ignore.tolist(), "probs": flat(probs),
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


# Convolution, pooling and batch-norm layers. Each case: the input x, the
# parameters, the output y and the gradients of sum(y * wout) for x and every
# parameter. `spec` tells the Rust test which layer to build.
def layer_case(spec, x_shape, module, params):
    x = det(x_shape, 1.0, 0.1).requires_grad_()
    with torch.no_grad():
        for k, p in module.named_parameters():
            p.copy_(det(tuple(p.shape), 0.3 if k == "weight" else 0.2, 0.0))
    y = module(x)
    wout = det(tuple(y.shape), 1.1, 0.05)
    (y * wout).sum().backward()
    case = {"spec": spec, "x_shape": list(x_shape), "x": flat(x), "y_shape": list(y.shape), "y": flat(y),
            "wout": flat(wout), "gx": flat(x.grad)}
    for k, p in module.named_parameters():
        case[k] = flat(p)
        case["g_" + k] = flat(p.grad)
    for k, b in module.named_buffers():
        case[k] = flat(b.double())
    return case


nn = torch.nn


def tf_same(n, k, s, d=1):
    """TensorFlow's "SAME": (before, after) for a dim of size n."""
    span = d * (k - 1) + 1
    total = max((math.ceil(n / s) - 1) * s + span - n, 0)
    return total // 2, total - total // 2


class PaddedConv2d(nn.Conv2d):
    """A convolution after F.pad(x, (left, right, top, bottom)): the reference for asymmetric padding."""
    def __init__(self, pad, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad4 = pad

    def forward(self, x):
        return super().forward(F.pad(x, self.pad4))


class PaddedConv1d(nn.Conv1d):
    def __init__(self, pad, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad2 = pad

    def forward(self, x):
        return super().forward(F.pad(x, self.pad2))


layers = [
    ("conv2d_same", {"layer": "conv2d", "cin": 3, "cout": 4, "k": [3, 3], "padding": "same"}, (2, 3, 7, 6),
     nn.Conv2d(3, 4, 3, padding="same")),
    ("conv2d_same_even", {"layer": "conv2d", "cin": 3, "cout": 2, "k": [2, 4], "padding": "same", "dilation": [1, 2]},
     (2, 3, 5, 9), nn.Conv2d(3, 2, (2, 4), padding="same", dilation=(1, 2))),
    ("conv2d_stride", {"layer": "conv2d", "cin": 4, "cout": 6, "k": [3, 3], "padding": [1, 2], "stride": [2, 2],
                       "groups": 2}, (3, 4, 9, 8), nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), groups=2)),
    ("conv2d_nobias", {"layer": "conv2d", "cin": 2, "cout": 3, "k": [1, 3], "padding": [0, 0], "bias": False},
     (1, 2, 4, 5), nn.Conv2d(2, 3, (1, 3), bias=False)),
    ("conv1d_same", {"layer": "conv1d", "cin": 4, "cout": 6, "k": [1, 4], "padding": "same", "groups": 2}, (2, 4, 11),
     nn.Conv1d(4, 6, 4, padding="same", groups=2)),
    ("conv1d_stride", {"layer": "conv1d", "cin": 3, "cout": 2, "k": [1, 3], "padding": [0, 1], "stride": [1, 2]},
     (2, 3, 10), nn.Conv1d(3, 2, 3, stride=2, padding=1)),
    # TensorFlow "SAME" at stride 2 (asymmetric on even sizes) and explicit asymmetric padding.
    ("conv2d_tf_same_s2", {"layer": "conv2d", "cin": 3, "cout": 4, "k": [3, 3], "padding": "same", "stride": [2, 2]},
     (2, 3, 8, 8), PaddedConv2d((*tf_same(8, 3, 2), *tf_same(8, 3, 2)), 3, 4, 3, stride=2)),
    ("conv2d_tf_same_s2_odd", {"layer": "conv2d", "cin": 2, "cout": 3, "k": [4, 3], "padding": "same",
                               "stride": [2, 3], "dilation": [1, 2]},
     (1, 2, 7, 10), PaddedConv2d((*tf_same(10, 3, 3, 2), *tf_same(7, 4, 2)), 2, 3, (4, 3), stride=(2, 3),
                                 dilation=(1, 2))),
    ("conv2d_asym", {"layer": "conv2d", "cin": 3, "cout": 2, "k": [3, 3], "padding": [1, 0, 2, 1]}, (2, 3, 6, 7),
     PaddedConv2d((2, 1, 1, 0), 3, 2, 3)),
    ("conv2d_asym_s2", {"layer": "conv2d", "cin": 4, "cout": 4, "k": [3, 3], "padding": [0, 1, 1, 0],
                        "stride": [2, 2], "groups": 4}, (2, 4, 8, 9), PaddedConv2d((1, 0, 0, 1), 4, 4, 3, stride=2,
                                                                                  groups=4)),
    ("conv1d_tf_same_s3", {"layer": "conv1d", "cin": 3, "cout": 2, "k": [1, 4], "padding": "same", "stride": [1, 3]},
     (2, 3, 10), PaddedConv1d(tf_same(10, 4, 3), 3, 2, 4, stride=3)),
    ("maxpool", {"layer": "maxpool", "k": 3, "stride": 2, "padding": 1}, (2, 3, 7, 6), nn.MaxPool2d(3, 2, 1)),
    ("maxpool2", {"layer": "maxpool", "k": 2, "stride": 2, "padding": 0}, (1, 2, 5, 7), nn.MaxPool2d(2)),
    ("avgpool", {"layer": "avgpool", "k": 2, "stride": 2, "padding": 0}, (2, 2, 6, 5), nn.AvgPool2d(2)),
    ("avgpool_pad_excl", {"layer": "avgpool", "k": 3, "stride": 2, "padding": 1, "count_include_pad": False},
     (1, 3, 7, 7), nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
    ("global_avg", {"layer": "global_avg"}, (2, 3, 4, 5), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
    ("bn2d_train", {"layer": "bn2d", "c": 3, "train": True}, (4, 3, 3, 5), nn.BatchNorm2d(3)),
    ("bn1d_train", {"layer": "bn1d", "c": 5, "train": True}, (6, 5), nn.BatchNorm1d(5)),
    ("bn1d_seq_train", {"layer": "bn1d", "c": 3, "train": True}, (2, 3, 7), nn.BatchNorm1d(3)),
]
cases["layers"] = {}
for name, spec, shape, module in layers:
    cases["layers"][name] = layer_case(spec, shape, module, None)

# Eval mode uses running statistics: two training passes, then evaluation.
bn = nn.BatchNorm2d(3, momentum=0.3)
with torch.no_grad():
    bn.weight.copy_(det((3,), 0.3, 1.0)); bn.bias.copy_(det((3,), 0.2))
    bn(det((4, 3, 3, 5), 1.0, 0.1)); bn(det((2, 3, 4, 4), 2.0, -0.5))
bn.eval()
xe = det((2, 3, 3, 3), 1.5)
cases["bn2d_eval"] = {"x": flat(xe), "y": flat(bn(xe)), "running_mean": flat(bn.running_mean),
                      "running_var": flat(bn.running_var), "weight": flat(bn.weight), "bias": flat(bn.bias),
                      "num_batches_tracked": int(bn.num_batches_tracked)}

# Recurrent layers (batch_first): output, final states, and the gradients of
# sum(out * wout) + sum(h_n * wh) [+ sum(c_n * wc)] for x, h0/c0 and every parameter.
def rnn_case(spec, module, x_shape, with_state):
    x = det(x_shape, 1.0, 0.1).requires_grad_()
    with torch.no_grad():
        for i, (k, p) in enumerate(module.named_parameters()):
            p.copy_(det(tuple(p.shape), 0.4, 0.01 * i))
    L = module.num_layers * (2 if module.bidirectional else 1)
    H = module.hidden_size
    state = None
    case = {"spec": spec, "x_shape": list(x_shape), "x": flat(x)}
    if with_state:
        h0 = det((L, x_shape[0], H), 0.5, -0.1).requires_grad_()
        case["h0"] = flat(h0)
        if isinstance(module, nn.LSTM):
            c0 = det((L, x_shape[0], H), 0.7, 0.05).requires_grad_()
            case["c0"] = flat(c0)
            state = (h0, c0)
        else:
            state = h0
    out, hn = module(x, state) if state is not None else module(x)
    cn = None
    if isinstance(module, nn.LSTM):
        hn, cn = hn
    wout = det(tuple(out.shape), 1.1, 0.05)
    wh = det(tuple(hn.shape), 0.9, -0.02)
    loss = (out * wout).sum() + (hn * wh).sum()
    if cn is not None:
        wc = det(tuple(cn.shape), 0.8, 0.03)
        loss = loss + (cn * wc).sum()
        case["wc"] = flat(wc); case["c_n"] = flat(cn)
    loss.backward()
    case.update({"y_shape": list(out.shape), "y": flat(out), "wout": flat(wout), "h_n": flat(hn), "wh": flat(wh),
                 "gx": flat(x.grad)})
    if with_state:
        case["g_h0"] = flat(state[0].grad if isinstance(state, tuple) else state.grad)
        if isinstance(state, tuple):
            case["g_c0"] = flat(state[1].grad)
    for k, p in module.named_parameters():
        case[k] = flat(p)
        case["g_" + k] = flat(p.grad)
    return case


cases["recurrent"] = {
    "lstm": rnn_case({"kind": "lstm", "input": 3, "hidden": 4, "layers": 1, "bidirectional": False},
                     nn.LSTM(3, 4, batch_first=True), (2, 5, 3), False),
    "lstm_2layer_bi_state": rnn_case({"kind": "lstm", "input": 3, "hidden": 4, "layers": 2, "bidirectional": True},
                                     nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True), (2, 5, 3), True),
    "gru_2layer_bi": rnn_case({"kind": "gru", "input": 3, "hidden": 4, "layers": 2, "bidirectional": True},
                              nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True), (3, 4, 3), True),
    "gru": rnn_case({"kind": "gru", "input": 2, "hidden": 5, "layers": 1, "bidirectional": False},
                    nn.GRU(2, 5, batch_first=True), (2, 6, 2), False),
    "rnn_tanh": rnn_case({"kind": "rnn_tanh", "input": 3, "hidden": 4, "layers": 1, "bidirectional": False},
                         nn.RNN(3, 4, batch_first=True), (2, 5, 3), True),
    "rnn_relu": rnn_case({"kind": "rnn_relu", "input": 3, "hidden": 4, "layers": 1, "bidirectional": False},
                         nn.RNN(3, 4, nonlinearity="relu", batch_first=True), (2, 5, 3), False),
}

emb = nn.Embedding(7, 3, padding_idx=2)
with torch.no_grad():
    emb.weight.copy_(det((7, 3), 0.6))
    emb.weight[2].zero_()
ids = torch.tensor([[1, 2, 6], [2, 0, 1]])
ye = emb(ids)
we = det(tuple(ye.shape), 1.3)
(ye * we).sum().backward()
cases["embedding"] = {"weight": flat(emb.weight), "ids": ids.reshape(-1).tolist(), "y": flat(ye), "wout": flat(we),
                      "g_weight": flat(emb.weight.grad)}

# Transformer blocks: LayerNorm, RMSNorm, MultiheadAttention (batch_first).
def block_case(module, inputs, call):
    with torch.no_grad():
        for i, (k, p) in enumerate(module.named_parameters()):
            p.copy_(det(tuple(p.shape), 0.3, 0.02 * i + (1.0 if k == "weight" and p.dim() == 1 else 0.0)))
    xs = [det(s, 1.0, 0.05 * j).requires_grad_() for j, s in enumerate(inputs)]
    y = call(module, xs)
    wout = det(tuple(y.shape), 1.1, 0.05)
    (y * wout).sum().backward()
    case = {"y": flat(y), "y_shape": list(y.shape), "wout": flat(wout)}
    for j, x in enumerate(xs):
        case[f"x{j}"] = flat(x); case[f"x{j}_shape"] = list(x.shape); case[f"g_x{j}"] = flat(x.grad)
    for k, p in module.named_parameters():
        case[k] = flat(p); case["g_" + k] = flat(p.grad)
    return case


pad = torch.tensor([[False, False, False, True, True], [False, False, False, False, False]])
cases["blocks"] = {
    "layernorm": block_case(nn.LayerNorm(6), [(2, 3, 6)], lambda m, x: m(x[0])),
    "rmsnorm": block_case(nn.RMSNorm(6), [(2, 3, 6)], lambda m, x: m(x[0])),
    "mha_self": block_case(nn.MultiheadAttention(8, 2, batch_first=True), [(2, 5, 8)],
                           lambda m, x: m(x[0], x[0], x[0], need_weights=False)[0]),
    "mha_causal": block_case(nn.MultiheadAttention(8, 2, batch_first=True), [(2, 5, 8)],
                             lambda m, x: m(x[0], x[0], x[0], need_weights=False,
                                            attn_mask=torch.triu(torch.ones(5, 5, dtype=torch.bool), 1))[0]),
    "encoder_post": block_case(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), [(2, 4, 8)],
                               lambda m, x: m(x[0])),
    "encoder_pre_gelu": block_case(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True,
                                                              activation="gelu"), [(2, 4, 8)], lambda m, x: m(x[0])),
    "decoder_post_causal": block_case(nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                      [(2, 4, 8), (2, 5, 8)],
                                      lambda m, x: m(x[0], x[1], tgt_mask=torch.triu(torch.ones(4, 4, dtype=torch.bool), 1),
                                                     memory_key_padding_mask=pad)),
    "decoder_pre_gelu": block_case(nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True,
                                                              activation="gelu"), [(2, 4, 8), (2, 5, 8)],
                                   lambda m, x: m(x[0], x[1])),
    "encoder_stack_pre": block_case(nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                                                                 norm_first=True),
                                                      2, norm=nn.LayerNorm(8), enable_nested_tensor=False),
                                    [(2, 4, 8)], lambda m, x: m(x[0])),
    "mha_cross_padding": block_case(nn.MultiheadAttention(8, 4, batch_first=True), [(2, 3, 8), (2, 5, 8)],
                                    lambda m, x: m(x[0], x[1], x[1], need_weights=False, key_padding_mask=pad)[0]),
}


# A whole GPT (Firebrand's `Gpt`, as benches/pytorch/gpt.py builds it: token and
# position embeddings, causal pre-norm GELU encoder layers, final norm,
# bias-free head), same parameter names: logits, loss and every gradient.
class Gpt(nn.Module):
    def __init__(self, V, T, C, L, H):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(C, H, 4 * C, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe.weight[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        for blk in self.blocks:
            x = blk(x, src_mask=mask, is_causal=True)
        return self.lm_head(self.ln_f(x))


gpt = Gpt(11, 9, 8, 2, 2)
with torch.no_grad():
    for i, (k, p) in enumerate(gpt.named_parameters()):
        p.copy_(det(tuple(p.shape), 0.3, 0.02 * i + (1.0 if k.endswith("weight") and p.dim() == 1 else 0.0)))
ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]])
targets = torch.tensor([[1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9]])
gpt_logits = gpt(ids)
gpt_loss = F.cross_entropy(gpt_logits.reshape(-1, 11), targets.reshape(-1))
gpt_loss.backward()
cases["gpt"] = {"ids": ids.reshape(-1).tolist(), "targets": targets.reshape(-1).tolist(), "logits": flat(gpt_logits),
                "loss": float(gpt_loss.detach())}
for k, p in gpt.named_parameters():
    cases["gpt"][k] = flat(p)
    cases["gpt"]["g_" + k] = flat(p.grad)

with open("nn_reference.json", "w") as f:
    json.dump({"torch_version": torch.__version__, "cases": cases}, f, indent=1)
print("wrote nn_reference.json, torch", torch.__version__)
