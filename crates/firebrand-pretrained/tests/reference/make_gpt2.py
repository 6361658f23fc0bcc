"""Writes gpt2_reference.json: a tiny GPT2LMHeadModel from `transformers` (gelu_new, tied head), every
weight set by a formula of its name's rank among the sorted state_dict names (no weights stored),
saved with save_pretrained to record the names and Conv1D shapes, then run on two sequences of ids:
the logits, in float64, and the greedy continuation of the first by 6 tokens. ../tiny_gpt2.rs writes
the same weights as a Hugging Face folder and compares.

Run here:  python3 make_gpt2.py   (pip install torch transformers)"""
import json, math, tempfile
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

torch.set_default_dtype(torch.float64)
config = dict(vocab_size=53, n_positions=32, n_embd=24, n_layer=2, n_head=4, activation_function="gelu_new",
              layer_norm_epsilon=1e-5, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, model_type="gpt2",
              tie_word_embeddings=True)
model = GPT2LMHeadModel(GPT2Config(**config)).eval()
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d, safe_serialization=True)
    saved = {n: list(t.shape) for n, t in load_file(f"{d}/model.safetensors").items()}
names = sorted(saved)


def formula(k, shape, name):
    n = math.prod(shape)
    v = torch.tensor([math.sin(0.37 * i + 0.11 + 1.3 * k) for i in range(n)]).reshape(shape)
    if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
        return 1.0 + 0.2 * v
    if len(shape) == 2 and "wte" not in name and "wpe" not in name:
        return v / math.sqrt(shape[0])  # Conv1D: (in, out)
    return 0.5 * v


sd = model.state_dict()
with torch.no_grad():
    for k, name in enumerate(names):
        sd[name].copy_(formula(k, saved[name], name))
ids = torch.tensor([[3, 17, 5, 33, 50, 9, 1], [2, 41, 8, 3, 12, 7, 30]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
    gen = model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)[0, 7:].tolist()
json.dump({"config": config, "names": names, "saved": saved, "ids": ids.tolist(), "logits": logits.flatten().tolist(),
           "greedy": gen}, open("gpt2_reference.json", "w"))
print("wrote gpt2_reference.json:", len(names), "tensors", names[:4])
