"""PyTorch + transformers counterpart of the `minilm_embed` workload: the real all-MiniLM-L6-v2
(transformers' BertModel from the same folder) on 256 BBC News articles (every 8th in sorted path
order, read as UTF-8 with errors replaced), each padded or truncated to 128 tokens by the same
tokenizer.json, batches of 32: forward pass and mean pooling under no_grad. Prints
    {"workload": "minilm_embed", "lib": "torch", "sentences_per_s": ...}
the median of --rounds runs after one warm-up (tokenizing not timed).
Usage: python3 benches/pytorch/minilm_embed.py [--model DIR] [--data DIR] [--rounds 5] [--threads 2]
(pip install torch transformers; the model and data folders as the Rust side finds them)."""
import json, os, time

from setup import start


def args(p):
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--int8", action="store_true",
                   help="torch.ao.quantization.quantize_dynamic (nn.Linear, qint8); adds cos_min/cos_mean to fp32")


a, torch = start(args)
from transformers import BertModel
from tokenizers import Tokenizer

home = os.path.expanduser("~/.cache/firebrand/models")
models = os.environ.get("FIREBRAND_MODELS") or home
model_dir = a.model or os.path.join(models, "all-MiniLM-L6-v2")
data = a.data or os.path.join(models, "bbcnews")
root = next(d for d in (os.path.join(data, "data"), data) if os.path.isdir(os.path.join(d, "business")))
paths = [os.path.join(root, t, f) for t in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, t))
         for f in sorted(os.listdir(os.path.join(root, t))) if f.endswith(".txt")]
texts = [open(p, "rb").read().decode("utf-8", errors="replace") for p in paths][::8][:256]

tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.enable_truncation(128)
tok.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
batches = []
for i in range(0, len(texts), 32):
    enc = tok.encode_batch(texts[i:i + 32])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    types = torch.tensor([e.type_ids for e in enc])
    batches.append((ids, mask, types))
model = BertModel.from_pretrained(model_dir).eval()


def run():
    out = []
    with torch.no_grad():
        for ids, mask, types in batches:
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            m = mask.unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1).clamp(min=1e-9))
    return torch.cat(out)


extra = {}
if a.int8:
    reference = run()
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    cos = torch.nn.functional.cosine_similarity(run(), reference, dim=1)
    extra = {"cos_min": round(cos.min().item(), 4), "cos_mean": round(cos.mean().item(), 4)}
run()
secs = []
for _ in range(a.rounds):
    t = time.perf_counter()
    run()
    secs.append(time.perf_counter() - t)
secs.sort()
print(json.dumps({"workload": "minilm_embed", "lib": "torch", "matmul_precision": a.matmul_precision, "int8": a.int8, **extra,
                  "sentences_per_s": round(len(texts) / secs[len(secs) // 2], 1), "documents": len(texts), "seq_len": 128}), flush=True)
