"""PyTorch + transformers counterpart of the `minilm_finetune` recipe (examples/text_classifier.rs):
all-MiniLM-L6-v2 as BertForSequenceClassification (new head) on BBC News, a seeded stratified 80/20
split, documents truncated/padded to 128 tokens by the same tokenizer.json, batches of 16, AdamW 5e-5
(weight decay 0.01 on matrices), linear decay to 0, clip 1.0, one epoch (Hugging Face Trainer's recipe).
Prints {"workload": "minilm_finetune", "lib": "torch", "epoch_seconds": ..., "test_accuracy": ...}.
Usage: python3 benches/pytorch/minilm_finetune.py [--model DIR] [--data DIR] [--epochs 1] [--threads 2]"""
import json, os, random, time

from setup import start


def args(p):
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--epochs", type=int, default=1)


a, torch = start(args)
from tokenizers import Tokenizer
from transformers import BertForSequenceClassification

models = os.environ.get("FIREBRAND_MODELS") or os.path.expanduser("~/.cache/firebrand/models")
model_dir = a.model or os.path.join(models, "all-MiniLM-L6-v2")
data = a.data or os.path.join(models, "bbcnews", "data")
classes = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
texts, labels = [], []
for c, name in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(data, name))):
        if f.endswith(".txt"):
            texts.append(open(os.path.join(data, name, f), "rb").read().decode("utf-8", errors="replace"))
            labels.append(c)
rng = random.Random(a.seed)
train, test = [], []
for c in range(len(classes)):
    idx = [i for i, l in enumerate(labels) if l == c]
    rng.shuffle(idx)
    n_test = round(len(idx) * 0.2)
    test += idx[:n_test]
    train += idx[n_test:]
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.enable_truncation(128)
tok.enable_padding(pad_id=0, pad_token="[PAD]")


def encode(idx):
    enc = tok.encode_batch([texts[i] for i in idx])
    t = lambda f: torch.tensor([f(e) for e in enc])
    return t(lambda e: e.ids), t(lambda e: e.attention_mask), t(lambda e: e.type_ids), torch.tensor([labels[i] for i in idx])


model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
steps = (len(train) + 15) // 16 * a.epochs
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
secs = []
for epoch in range(a.epochs):
    model.train()
    rng.shuffle(train)
    t0 = time.perf_counter()
    for i in range(0, len(train), 16):
        ids, mask, types, y = encode(train[i:i + 16])
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    secs.append(time.perf_counter() - t0)
model.eval()
correct = 0
with torch.no_grad():
    for i in range(0, len(test), 32):
        ids, mask, types, y = encode(test[i:i + 32])
        correct += (model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.argmax(-1) == y).sum().item()
print(json.dumps({"workload": "minilm_finetune", "lib": "torch", "matmul_precision": a.matmul_precision, "epoch_seconds": round(sum(secs) / len(secs), 1),
                  "test_accuracy": round(correct / len(test), 4), "train": len(train), "test": len(test)}), flush=True)
