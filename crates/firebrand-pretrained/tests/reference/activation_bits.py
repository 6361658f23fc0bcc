"""How much quantizing the activations of every nn.Linear moves SmolLM2-135M-Instruct's logits (the
Q4_1 GGUF, dequantized to float32 by transformers), on the chat prompt of make_smollm2.py. Prints, per
scheme, the worst and mean over positions of max |logit diff| / max |logit|:
  * 8-bit blocks of 32 (x = d*q, d = max|x|/127), llama.cpp's Q8_0/Q8_1 activations;
  * the same on the tied head's input only;
  * 16 bits per row (d = max|row|/32767), firebrand_ops::gemm::blocks' Q16Rows;
  * bfloat16 activations, and bfloat16 activations and weights.
Run here: python3 activation_bits.py DIR (DIR holds SmolLM2-135M-Instruct.Q4_1.gguf). Measured on
2026-12-02: 8-bit blocks 6.5e-2 worst (3.6e-2 mean), head only 1.65e-2, 16-bit rows 1.56e-3, bf16
activations 1.18e-2, bf16 both 1.65e-2 (the tied embeddings in bf16 too)."""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
d = sys.argv[1]
f = "SmolLM2-135M-Instruct.Q4_1.gguf"
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
prompt = "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
ids = torch.tensor([tok(prompt, add_special_tokens=False).input_ids])


def q8_blocks(x):
    b = x.reshape(-1, 32)
    s = b.abs().amax(1, keepdim=True) / 127
    return (torch.where(s > 0, torch.round(b / s), torch.zeros_like(b)) * s).reshape(x.shape)


def q16_rows(x):
    b = x.reshape(-1, x.shape[-1])
    s = b.abs().amax(1, keepdim=True) / 32767
    return (torch.where(s > 0, torch.round(b / s), torch.zeros_like(b)) * s).reshape(x.shape)


def bf16(x):
    return x.bfloat16().float()


def report(name, logits, ref):
    r = (logits - ref).abs().amax(1) / ref.abs().amax(1)
    print(f"{name}: worst {r.max().item():.3e}, mean {r.mean().item():.3e}")


def with_inputs(fn, only=None):
    hooks = [m.register_forward_pre_hook(lambda mod, inp: (fn(inp[0]),))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and (only is None or n == only)]
    try:
        return model(ids).logits[0]
    finally:
        for h in hooks:
            h.remove()


with torch.no_grad():
    ref = model(ids).logits[0]
    report("8-bit blocks of 32 (llama.cpp)", with_inputs(q8_blocks), ref)
    report("8-bit blocks, the head only", with_inputs(q8_blocks, only="lm_head"), ref)
    report("16 bits per row (firebrand)", with_inputs(q16_rows), ref)
    report("bf16 activations", with_inputs(bf16), ref)
    w = {n: m.weight.data.clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = bf16(m.weight.data)
    report("bf16 activations and weights", with_inputs(bf16), ref)
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = w[n]
