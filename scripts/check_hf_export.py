"""Checks ember's HuggingFace GPT-2 export on the transformers side.

1. The tiny-gpt2 fixture, imported and exported by ember, loads with
   GPT2LMHeadModel.from_pretrained and reproduces the fixture's reference logits.
2. A run trained by ember (default runs/pretrain, as the README's first command leaves it),
   exported by ember, loads with transformers together with its vocab.json + merges.txt and
   gives the same tokens, the same per-token losses (`ember score --json`) and the same
   greedy continuation (`ember generate`) as ember.

    bash scripts/setup_hf_venv.sh   # once
    scripts/.venv-hf/bin/python scripts/check_hf_export.py [--ember BIN] [--run RUN_DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, GPT2Tokenizer

repo = Path(__file__).resolve().parent.parent
target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "ember-target"))
parser = argparse.ArgumentParser()
parser.add_argument("--ember", default=str(target / "release" / "ember"))
parser.add_argument("--run", default=str(repo / "runs" / "pretrain"))
parser.add_argument("--fixtures", default=str(repo.parent / "shared" / "fixtures"))
args = parser.parse_args()
torch.set_num_threads(1)
failed = False


def ember(*argv):
    out = subprocess.run([args.ember, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ember {' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout


def report(what, value, limit):
    global failed
    ok = value <= limit
    failed |= not ok
    print(f"{'ok ' if ok else 'BAD'} {what}: {value:.3g} (limit {limit:g})")


with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    # 1. Fixture round trip through ember, read by transformers.
    fixture = Path(args.fixtures) / "tiny-gpt2"
    ember("import", "gpt2", "--from", str(fixture), "--out", str(tmp / "run"))
    ember("export", "gpt2", "--checkpoint", str(tmp / "run"), "--out", str(tmp / "hf"))
    model = GPT2LMHeadModel.from_pretrained(tmp / "hf", attn_implementation="eager").eval()
    reference = json.loads((fixture / "reference.json").read_text())
    ids = torch.tensor(reference["input_ids"])
    want = torch.tensor(reference["logits"]["data"]).reshape(reference["logits"]["shape"])
    with torch.no_grad():
        logits = model(ids).logits
    report("fixture: |transformers(ember export) - reference| logits", (logits - want).abs().max().item(), 1e-5)

    # 2. An ember-trained run.
    run = Path(args.run)
    if not (run / "run.toml").is_file():
        print(f"skip: {run} holds no run (pass --run RUN_DIR)")
    else:
        ember("export", "gpt2", "--checkpoint", str(run), "--out", str(tmp / "trained"))
        model = GPT2LMHeadModel.from_pretrained(tmp / "trained", attn_implementation="eager").eval()
        tokenizer = GPT2Tokenizer.from_pretrained(tmp / "trained")
        text = ("I had always thought Jack Gisburn rather a cheap genius--though a good fellow "
                "enough--so it was no great surprise to me to hear that, in the height of his glory")
        scored = json.loads(ember("score", "--checkpoint", str(run), "--text", text, "--json"))
        hf_ids = tokenizer(text)["input_ids"]
        print(f"{'ok ' if hf_ids == scored['tokens'] else 'BAD'} tokenization: {len(hf_ids)} tokens")
        failed |= hf_ids != scored["tokens"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([hf_ids])).logits[0, :-1], dim=-1)
        nll = -log_probs.gather(1, torch.tensor(hf_ids[1:]).unsqueeze(1)).squeeze(1)
        report("trained run: |ember - transformers| per-token loss",
               (nll - torch.tensor(scored["nll"])).abs().max().item(), 1e-4)
        print(f"    mean loss: ember {scored['loss']:.6f}, transformers {nll.mean().item():.6f}")

        prompt = "Every effort moves you"
        ember_text = ember("generate", "--checkpoint", str(run), "--prompt", prompt,
                           "--max-new-tokens", "25", "--no-eos").rstrip("\n")
        with torch.no_grad():
            out = model.generate(torch.tensor([tokenizer(prompt)["input_ids"]]), max_new_tokens=25,
                                 min_new_tokens=25, do_sample=False, pad_token_id=0)
        hf_text = tokenizer.decode(out[0])
        same = hf_text == ember_text
        failed |= not same
        print(f"{'ok ' if same else 'BAD'} greedy continuation: {ember_text!r}")
        if not same:
            print(f"    transformers: {hf_text!r}")

sys.exit(1 if failed else 0)
