"""llama.cpp counterpart of `llm_generate --quantized`: SmolLM2-135M-Instruct from its Q4_1 GGUF run by
llama.cpp itself (through llama-cpp-python) on its own Q4_1/Q8_0 blocks, the same 128-token prompt (the
start of shakespeare.txt tokenized by transformers from the same file, so both sides see the same ids) in
one pass, then 128 new greedy tokens one by one through its KV cache. Prints {"workload":
"llm_generate", "lib": "llama.cpp", "weights": "q4_1", "prompt_tokens_per_s", "tokens_per_s"}, medians
of --rounds after one warm-up.
Usage: python3 benches/pytorch/llm_generate_llamacpp.py [--model FILE.gguf] [--rounds 3] [--threads 2]
(CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python: it compiles llama.cpp for this CPU)."""
import argparse, json, os, sys, time

sys.path.insert(0, os.path.dirname(__file__))
from setup import shakespeare

p = argparse.ArgumentParser()
p.add_argument("--model", default=None)
p.add_argument("--text", default=None)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--extra-bufts", action="store_true", help="let llama.cpp use its AMX/repacked buffer types")
a = p.parse_args()
import llama_cpp
from llama_cpp import Llama

# llama.cpp's AMX buffer type crashes on this machine (SIGSEGV in ggml_backend_amx_mul_mat, llama-cpp-python
# 0.3.36 built with GGML_NATIVE); --no-extra-bufts (the default) keeps its AVX-512/VNNI CPU path.
p_defaults = llama_cpp.llama_cpp.llama_model_default_params


def model_params():
    m = p_defaults()
    m.use_extra_bufts = a.extra_bufts
    return m


llama_cpp.llama_cpp.llama_model_default_params = model_params
llama_cpp.llama.llama_cpp.llama_model_default_params = model_params

models = os.environ.get("FIREBRAND_MODELS") or os.path.expanduser("~/.cache/firebrand/models")
path = a.model or os.path.join(models, "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
llm = Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
            verbose=False, logits_all=False)
prompt = llm.tokenize(shakespeare(a.text)[:4000].encode(), add_bos=False, special=False)[:128]
assert len(prompt) == 128


def run():
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    nxt = int(llm.scores[llm.n_tokens - 1].argmax())
    p = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(128):
        llm.eval([nxt])
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
    return p, time.perf_counter() - t1


run()
rs = [run() for _ in range(a.rounds)]
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({"workload": "llm_generate", "lib": "llama.cpp", "weights": "q4_1",
                  "prompt_tokens_per_s": round(128 / med([r[0] for r in rs]), 1),
                  "tokens_per_s": round(128 / med([r[1] for r in rs]), 1)}), flush=True)
