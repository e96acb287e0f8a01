#!/usr/bin/env python3
"""tiktoken's single-thread GPT-2 encode throughput, the reference for `ember bench tokenizer`.

Builds the same local encoding as tiktoken_reference.py and times, on one thread (no
encode_batch), the cases ember measures: the-verdict as one string, every SMS message encoded
one by one, and the SMS messages joined by newlines. The reported figure (`seconds`,
`mb_per_s`) is `encode(text, allowed_special="all")`; `encode_ordinary` is given beside it.
Each is the best repetition of at least --seconds of repeats; 1 MB = 1e6 bytes.
Prints one JSON object: {"tiktoken_version": ..., "results": [{"corpus": ..., ...}, ...]}.

Run:  scripts/.venv/bin/python scripts/bench_tiktoken.py [--data DIR] [--seconds S]
"""
import argparse
import json
import time
from pathlib import Path

import tiktoken

from tiktoken_reference import default_data, gpt2_encoding, sms_messages


def best_time(fn, min_seconds):
    """Best wall time of fn() over at least 3 repeats lasting min_seconds together."""
    best, started, reps = float("inf"), time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - started < min_seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data(), help="directory with the dataset files")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum measuring time per case")
    args = parser.parse_args()
    data = Path(args.data)
    enc = gpt2_encoding(data)
    messages = sms_messages(data)
    cases = {
        "the-verdict": [(data / "the-verdict.txt").read_text(encoding="utf-8")],
        "sms-messages": messages,
        "sms-joined": ["\n".join(messages)],
    }
    results = []
    for name, texts in cases.items():
        def encode_all():
            for text in texts:
                enc.encode(text, allowed_special="all")

        def encode_ordinary_all():
            for text in texts:
                enc.encode_ordinary(text)

        seconds = best_time(encode_all, args.seconds)
        ordinary = best_time(encode_ordinary_all, args.seconds)
        size = sum(len(t.encode("utf-8")) for t in texts)
        tokens = sum(len(enc.encode(t, allowed_special="all")) for t in texts)
        results.append({"corpus": name, "bytes": size, "tokens": tokens,
                        "seconds": seconds, "mb_per_s": size / 1e6 / seconds,
                        "ordinary_seconds": ordinary, "ordinary_mb_per_s": size / 1e6 / ordinary})
    print(json.dumps({"tiktoken_version": tiktoken.__version__, "results": results}))


if __name__ == "__main__":
    main()
