"""PyTorch + transformers counterpart of the `llm_generate` workload: SmolLM2-135M-Instruct from its
Q4_1 GGUF (transformers dequantizes it to float32), a 128-token prompt (the start of shakespeare.txt
tokenized by the file's tokenizer) in one pass, then 128 new greedy tokens one by one through the
KV cache. Prints {"workload": "llm_generate", "lib": "torch", "prompt_tokens_per_s", "tokens_per_s"},
medians of --rounds after one warm-up.
Usage: python3 benches/pytorch/llm_generate.py [--model FILE.gguf] [--rounds 3] [--threads 2]
(pip install torch transformers gguf accelerate)."""
import json, os, time

from setup import start, shakespeare


def args(p):
    p.add_argument("--model", default=None)
    p.add_argument("--text", default=None)
    p.add_argument("--rounds", type=int, default=3)


a, torch = start(args)
from transformers import AutoModelForCausalLM, AutoTokenizer

models = os.environ.get("FIREBRAND_MODELS") or os.path.expanduser("~/.cache/firebrand/models")
path = a.model or os.path.join(models, "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
d, f = os.path.split(path)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
prompt = tok(shakespeare(a.text)[:4000], add_special_tokens=False).input_ids[:128]
assert len(prompt) == 128


def run():
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(torch.tensor([prompt]), use_cache=True)
        past, nxt = out.past_key_values, out.logits[0, -1].argmax().item()
        p = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(128):
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[0, -1].argmax().item()
        return p, time.perf_counter() - t1


run()
rs = [run() for _ in range(a.rounds)]
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"workload": "llm_generate", "lib": "torch", "matmul_precision": a.matmul_precision, "prompt_tokens_per_s": round(128 / med([r[0] for r in rs]), 1),
                  "tokens_per_s": round(128 / med([r[1] for r in rs]), 1)}), flush=True)
