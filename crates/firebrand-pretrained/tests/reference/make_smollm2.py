"""Writes smollm2_reference.json: Hugging Face transformers loading SmolLM2-135M-Instruct.Q4_1.gguf
(dequantized to float32, as transformers reads GGUF) run on a fixed sequence of token ids: for each
position the largest |logit|, the top-5 ids and their logits, and the logits of 32 fixed ids; and
the greedy continuation of the ids by 12 tokens; and the ids of a few texts (digits, accents, CJK,
emoji, whitespace, special tokens) from the tokenizer transformers builds from the file. ../smollm2.rs compares Firebrand's Llama.

Run here:  python3 make_smollm2.py DIR   (DIR holds SmolLM2-135M-Instruct.Q4_1.gguf; pip install torch
transformers gguf accelerate)."""
import json, sys
import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                             torch_dtype=torch.float32).eval()
# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" tokenized by the
# model's own tokenizer (its ids are what matters here; the tokenizer is tested separately).
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
prompt = "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
ids = tok(prompt, add_special_tokens=False).input_ids
probe = list(range(0, 49152, 1536))
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
    rows = []
    for p in range(len(ids)):
        l = logits[p]
        top = torch.topk(l, 5)
        rows.append({"max_abs": float(l.abs().max()), "top_ids": top.indices.tolist(), "top": top.values.tolist(),
                     "probe": l[probe].tolist()})
    gen = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
texts = ["Hello, world! 12345 and 3.14159", "naïve café — 東京 🚀 emoji", "  leading spaces\tand\ttabs\n\nnew lines  ",
         "<|im_start|>system\nYou are helpful.<|im_end|>"]
tokenized = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in texts]
json.dump({"prompt": prompt, "ids": ids, "probe_ids": probe, "positions": rows, "greedy": gen,
           "greedy_text": tok.decode(gen), "tokenized": tokenized}, open("smollm2_reference.json", "w"))
print("wrote smollm2_reference.json:", len(ids), "ids; greedy:", repr(tok.decode(gen)))
