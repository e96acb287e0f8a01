#!/usr/bin/env python3
"""Reference for `ember bench generate`: tokens/s of HuggingFace transformers' `generate`
(GPT2LMHeadModel, greedy, use_cache=True) with the same model shape, prompt length, number of
new tokens and thread count as ember's bench, on random weights (GPT-2's own init, fp32, eval
mode, no grad). The generation is forced to its full length (min_new_tokens), after an untimed
short warm-up. Prints one JSON object: {"tokens_per_s", "seconds", "new_tokens",
"transformers_version", "torch_version"}.

Run:  scripts/.venv-hf/bin/python scripts/bench_generate_hf.py --emb 768 --layers 12 --heads 12 \
          --vocab 50257 --context 1024 --prompt 16 --new-tokens 256 --threads 2 [--batch 1] \
          [--device cuda]
"""
import argparse
import json
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    p = argparse.ArgumentParser()
    for name in ["emb", "layers", "heads", "vocab", "context", "prompt", "new-tokens", "threads"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=a.vocab, n_positions=a.context, n_embd=a.emb, n_layer=a.layers,
                        n_head=a.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval().to(a.device)
    prompt = torch.randint(0, a.vocab, (a.batch, a.prompt)).to(a.device)

    def run(new_tokens):
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=0)
        assert out.shape[1] == a.prompt + new_tokens, out.shape
        if a.device == "cuda":
            torch.cuda.synchronize()

    run(8)  # warm-up
    started = time.perf_counter()
    run(a.new_tokens)
    seconds = time.perf_counter() - started
    print(json.dumps({"tokens_per_s": a.batch * a.new_tokens / seconds, "seconds": seconds,
                      "new_tokens": a.new_tokens, "transformers_version": transformers.__version__,
                      "torch_version": torch.__version__}))


if __name__ == "__main__":
    main()
