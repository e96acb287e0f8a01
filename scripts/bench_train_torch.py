#!/usr/bin/env python3
"""PyTorch eager reference for `ember bench train`: tokens/s of a full training step (forward,
backward, AdamW, global-norm gradient clipping) of the book's GPTModel (chapter 4), with the
same configuration, initialisation scheme (N(0, 0.02) weights, zero biases, LayerNorm (1, 0)),
thread count and random batches as ember's bench.

Usage: python bench_train_torch.py --emb 768 --layers 12 --heads 12 --vocab 50257 \
           --context 256 --batch 2 --steps 3 --threads 2 [--qkv-bias] [--tie] \
           [--device cuda] [--compile] [--drop-rate 0.1]
Prints one JSON object: {"tokens_per_s": …, "peak_rss_mb": …}, with --device cuda also
"peak_gpu_mb" (torch.cuda.max_memory_allocated), with --compile also "compiled_tokens_per_s":
the same step with the model under torch.compile (default mode), timed after its own warm-up
(which compiles it). fp32 throughout, TF32 left at PyTorch's default (off for matmuls).
--drop-rate: the book's dropout (after the embeddings, on the attention weights and on both
residual branches), 0 by default.
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d, heads, context, qkv_bias, drop):
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.heads, self.head_dim = heads, d // heads
        self.W_query = nn.Linear(d, d, bias=qkv_bias)
        self.W_key = nn.Linear(d, d, bias=qkv_bias)
        self.W_value = nn.Linear(d, d, bias=qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(context, context), diagonal=1).bool())

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask[:t, :t], float("-inf"))
        weights = self.drop(torch.softmax(scores / self.head_dim**0.5, dim=-1))
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, context, qkv_bias, drop):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = MultiHeadAttention(d, heads, context, qkv_bias, drop)
        self.drop = nn.Dropout(drop)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.drop(self.att(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, vocab, context, d, layers, heads, qkv_bias, tie, drop):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*[Block(d, heads, context, qkv_bias, drop) for _ in range(layers)])
        self.final_norm = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.out_head.weight = self.tok_emb.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.drop(self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device)))
        return self.out_head(self.final_norm(self.blocks(x)))


def main():
    p = argparse.ArgumentParser()
    for name in ["emb", "layers", "heads", "vocab", "context", "batch", "steps", "threads"]:
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--qkv-bias", action="store_true")
    p.add_argument("--tie", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--drop-rate", type=float, default=0.0)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = GPTModel(a.vocab, a.context, a.emb, a.layers, a.heads, a.qkv_bias, a.tie, a.drop_rate)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    ids = torch.randint(0, a.vocab, (a.batch, a.context + 1)).to(device)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def finish():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def tokens_per_s(forward):
        def step():
            opt.zero_grad()
            logits = forward(inputs)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step()  # warm-up: allocations, AdamW state (and compiling, under torch.compile)
        finish()
        started = time.perf_counter()
        for _ in range(a.steps):
            step()
        finish()
        return a.batch * a.context * a.steps / (time.perf_counter() - started)

    result = {"tokens_per_s": tokens_per_s(model)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    if a.compile:
        try:
            result["compiled_tokens_per_s"] = tokens_per_s(torch.compile(model))
        except Exception as error:  # e.g. no C compiler for inductor: keep the eager figure
            result["compile_error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    result["torch_version"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
