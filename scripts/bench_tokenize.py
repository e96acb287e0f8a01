#!/usr/bin/env python3
"""Reference for `ember bench tokenize`: single-thread GPT-2 BPE encode throughput of tiktoken
and of HuggingFace tokenizers, on the cases ember measures.

Both encoders are built from the same local encoder.json + vocab.bpe that ember reads (no
download): tiktoken as in tiktoken_reference.py; HF tokenizers as GPT-2's tokenizer.json is
(byte-level BPE, byte-level pre-tokeniser without prefix space, <|endoftext|> special).
Cases: the-verdict as one string, every SMS message encoded one by one, the SMS messages joined
by newlines. Each text goes through `encode` one after the other on one thread (no batch APIs;
RAYON_NUM_THREADS=1 for HF tokenizers). A figure is the best repetition of at least --seconds of
repeats; 1 MB = 1e6 bytes. Token counts are printed so the caller can check all agree.
Prints one JSON object: {"tiktoken_version", "tokenizers_version", "results": [{"corpus",
"bytes", "tiktoken": {"tokens", "mb_per_s"}, "hf_tokenizers": {...}}]}; an encoder that is not
installed is null.

Run:  scripts/.venv-hf/bin/python scripts/bench_tokenize.py [--data DIR] [--seconds S]
"""
import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiktoken_reference import default_data, sms_messages  # noqa: E402


def best_time(fn, min_seconds):
    """Best wall time of fn() over at least 3 repeats lasting min_seconds together."""
    best, started, reps = float("inf"), time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - started < min_seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best


def tiktoken_encoder(data):
    try:
        import tiktoken
    except ImportError:
        return None, None
    from tiktoken_reference import gpt2_encoding

    enc = gpt2_encoding(data)
    return tiktoken.__version__, lambda text: enc.encode(text, allowed_special="all")


def hf_encoder(data):
    try:
        import tokenizers
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        return None, None
    bpe = models.BPE.from_file(
        str(data / "gpt2" / "encoder.json"), str(data / "gpt2" / "vocab.bpe")
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tokenizers.__version__, lambda text: tok.encode(text, add_special_tokens=False).ids


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data(), help="directory with the dataset files")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum measuring time per case")
    args = parser.parse_args()
    data = Path(args.data)
    messages = sms_messages(data)
    cases = {
        "the-verdict": [(data / "the-verdict.txt").read_text(encoding="utf-8")],
        "sms-messages": messages,
        "sms-joined": ["\n".join(messages)],
    }
    versions, encoders = {}, {}
    for name, make in [("tiktoken", tiktoken_encoder), ("hf_tokenizers", hf_encoder)]:
        versions[name], encoders[name] = make(data)
    results = []
    for corpus, texts in cases.items():
        size = sum(len(t.encode("utf-8")) for t in texts)
        row = {"corpus": corpus, "bytes": size}
        for name, encode in encoders.items():
            if encode is None:
                row[name] = None
                continue

            def encode_all():
                for text in texts:
                    encode(text)

            seconds = best_time(encode_all, args.seconds)
            tokens = sum(len(encode(t)) for t in texts)
            row[name] = {"tokens": tokens, "seconds": seconds, "mb_per_s": size / 1e6 / seconds}
        results.append(row)
    print(json.dumps({"tiktoken_version": versions["tiktoken"],
                      "tokenizers_version": versions["hf_tokenizers"], "results": results}))


if __name__ == "__main__":
    main()
