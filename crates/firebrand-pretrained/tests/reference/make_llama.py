"""Writes llama_reference.json: a tiny LlamaForCausalLM from `transformers` (grouped-query attention,
a rotary base of 5000, an untied head), every weight set by a formula of its name's rank among the
sorted state_dict names (no weights stored), saved with save_pretrained to record the names and
shapes (Hugging Face's rotate-half order of each head's query and key rows), then run on two
sequences of ids: the logits without a mask and with the second sequence left-padded by 2 (an
attention mask of 0s), in float64, and the greedy continuation of the first by 6 tokens.
../tiny_llama.rs writes the same weights as a Hugging Face folder and compares.

Run here:  python3 make_llama.py   (pip install torch transformers)"""
import json, math, tempfile
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_default_dtype(torch.float64)
config = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=5000.0,
              tie_word_embeddings=False, model_type="llama", hidden_act="silu", attention_bias=False,
              mlp_bias=False, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(LlamaConfig(**config)).eval()
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d, safe_serialization=True)
    saved = {n: list(t.shape) for n, t in load_file(f"{d}/model.safetensors").items()}
    saved_config = json.load(open(f"{d}/config.json"))
names = sorted(saved)


def formula(k, shape, name):
    n = math.prod(shape)
    v = torch.tensor([math.sin(0.37 * i + 0.11 + 1.3 * k) for i in range(n)]).reshape(shape)
    if name.endswith("norm.weight"):
        return 1.0 + 0.2 * v
    if len(shape) == 2 and "embed_tokens" not in name:
        return v / math.sqrt(shape[1])  # Linear: (out, in)
    return 0.5 * v


sd = model.state_dict()
with torch.no_grad():
    for k, name in enumerate(names):
        sd[name].copy_(formula(k, saved[name], name))
ids = torch.tensor([[3, 17, 5, 33, 58, 9, 1], [0, 0, 8, 3, 12, 7, 30]])
mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
    masked = model(input_ids=ids, attention_mask=mask).logits
    gen = model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)[0, 7:].tolist()
json.dump({"config": saved_config, "names": names, "saved": saved, "ids": ids.tolist(), "mask": mask.tolist(),
           "logits": logits.flatten().tolist(), "masked_logits": masked.flatten().tolist(), "greedy": gen},
          open("llama_reference.json", "w"))
print("wrote llama_reference.json:", len(names), "tensors", names[:4], "greedy", gen)
