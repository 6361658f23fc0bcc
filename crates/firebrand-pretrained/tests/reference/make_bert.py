"""Writes bert_reference.json: a tiny BertModel from `transformers`, every
weight set by a formula of its name's rank among the sorted state_dict
names and its element index (no weights are stored), saved with
save_pretrained to check the names, then run on two texts of ids, one
padded, with and without the attention mask: the hidden states and the
pooler output, in float64; and a BertForMaskedLM set the same way, its logits. ../tiny_bert.rs writes the same weights into a
Hugging Face folder (config.json + model.safetensors), loads it with
BertModel::from_pretrained and compares.

Run here:  python3 make_bert.py   (pip install torch transformers)"""
import json, math, tempfile
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

torch.set_default_dtype(torch.float64)
config = dict(
    vocab_size=61, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    hidden_act="gelu", max_position_embeddings=16, type_vocab_size=2, layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, model_type="bert",
)
model = BertModel(BertConfig(**config)).eval()


def formula(k, shape, name):
    n = math.prod(shape)
    v = torch.tensor([math.sin(0.37 * i + 0.11 + 1.3 * k) for i in range(n)]).reshape(shape)
    if name.endswith("LayerNorm.weight"):
        return 1.0 + 0.2 * v
    if len(shape) == 2 and "embeddings" not in name:
        return v / math.sqrt(shape[1])
    return 0.5 * v


names = sorted(model.state_dict().keys())
with torch.no_grad():
    for k, name in enumerate(names):
        p = model.state_dict()[name]
        if p.dtype.is_floating_point:
            p.copy_(formula(k, list(p.shape), name))
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d, safe_serialization=True)
    saved = load_file(f"{d}/model.safetensors")
    shapes = {n: list(t.shape) for n, t in saved.items()}
ids = torch.tensor([[2, 17, 5, 33, 60, 9, 3], [2, 41, 8, 3, 0, 0, 0]])
mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
types = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
out = {"config": config, "names": names, "saved": shapes, "ids": ids.tolist(), "mask": mask.tolist(), "types": types.tolist()}
with torch.no_grad():
    for key, m in [("masked", mask), ("unmasked", None)]:
        o = model(input_ids=ids, attention_mask=m, token_type_ids=types)
        out[key] = {"hidden": o.last_hidden_state.flatten().tolist(), "pooler": o.pooler_output.flatten().tolist()}
# The masked-LM model: its own names (`bert.` prefix, `cls.predictions.*`, the decoder tied to the
# word embeddings), the same formula over them; its logits on the masked run.
from transformers import BertForMaskedLM
mlm = BertForMaskedLM(BertConfig(**config)).eval()
with tempfile.TemporaryDirectory() as d:
    mlm.save_pretrained(d, safe_serialization=True)
    mlm_saved = {n: list(t.shape) for n, t in load_file(f"{d}/model.safetensors").items()}
mlm_names = sorted(mlm_saved)
with torch.no_grad():
    sd = mlm.state_dict()
    for k, name in enumerate(mlm_names):
        sd[name].copy_(formula(k, mlm_saved[name], name))
    mlm.tie_weights()
    out["mlm"] = {"names": mlm_names, "saved": mlm_saved,
                  "logits": mlm(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.flatten().tolist()}
json.dump(out, open("bert_reference.json", "w"))
print("wrote bert_reference.json:", len(names), "tensors,", sorted(shapes) == sorted(n for n in names if n in shapes))
