"""Writes chat_reference.json: SmolLM2-135M-Instruct.Q4_1.gguf's own chat template (tokenizer.chat_template)
applied by Hugging Face transformers' apply_chat_template to a few conversations (no system turn, so the
template adds its default one; a system turn of our own; several turns; with and without the generation
prompt), and transformers' greedy answer (16 tokens at most, stopping at <|im_end|>) to the first.
../smollm2.rs renders the same conversations with firebrand's ChatTemplate and compares.

Run here:  python3 make_chat.py DIR   (DIR holds SmolLM2-135M-Instruct.Q4_1.gguf; pip install torch
transformers gguf accelerate)."""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=name)
conversations = [
    ([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], True),
    ([{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3? ✓ café"}], False),
]
rendered = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g) for m, g in conversations]
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], gguf_file=name, torch_dtype=torch.float32).eval()
ids = tok(rendered[0], add_special_tokens=False).input_ids
end = tok.convert_tokens_to_ids("<|im_end|>")
with torch.no_grad():
    gen = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=end)[0, len(ids):].tolist()
json.dump({"conversations": [{"messages": m, "add_generation_prompt": g, "text": t}
                             for (m, g), t in zip(conversations, rendered)],
           "ids": ids, "greedy": gen, "greedy_text": tok.decode(gen, skip_special_tokens=True)},
          open("chat_reference.json", "w"), ensure_ascii=False, indent=1)
print("wrote chat_reference.json; greedy:", repr(tok.decode(gen)))
