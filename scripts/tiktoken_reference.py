#!/usr/bin/env python3
"""Reference GPT-2 token ids from tiktoken, for ember's tokenizer tests.

tiktoken's `gpt2` encoding is built here from the same local encoder.json + vocab.bpe that ember
reads (no download). The output, crates/ember-data/tests/data/tiktoken_reference.json, holds full
ids for tricky strings and, for whole corpora, a token count and a digest of the id stream.

Regenerate:  bash scripts/setup_venv.sh && scripts/.venv/bin/python scripts/tiktoken_reference.py
"""
import argparse
import hashlib
import json
import os
import struct
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

REPO = Path(__file__).resolve().parent.parent
DIGEST_DEFINITION = (
    "sha256 over, for each encoded text in order, its ids as little-endian u32 "
    "followed by the separator u32 0xFFFFFFFF"
)


def default_data() -> str:
    """$EMBER_DATA_MIRROR, else the offline mirror ../shared/datasets beside the repo root."""
    return os.environ.get("EMBER_DATA_MIRROR") or str(REPO.parent / "shared" / "datasets")


def gpt2_encoding(data: Path) -> tiktoken.Encoding:
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "gpt2" / "vocab.bpe"),
        encoder_json_file=str(data / "gpt2" / "encoder.json"),
    )
    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


def encode(enc, text):
    return enc.encode(text, allowed_special="all")


def digest(enc, texts):
    h = hashlib.sha256()
    count = 0
    for text in texts:
        ids = encode(enc, text)
        count += len(ids)
        h.update(struct.pack(f"<{len(ids)}I", *ids))
        h.update(struct.pack("<I", 0xFFFFFFFF))
    return count, h.hexdigest()


def sms_messages(data: Path):
    raw = (data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8")
    lines = raw.split("\n")
    assert lines[-1] == ""  # every line ends in "\n"
    return [line.split("\t", 1)[1] for line in lines[:-1]]


def instruction_fields(data: Path):
    entries = json.loads((data / "instruction-data.json").read_text(encoding="utf-8"))
    return [e[key] for e in entries for key in ("instruction", "input", "output")]


BOOK = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace."
CASES = [
    BOOK,
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "a\r\nb",
    "word   ",
    "   word",
    "  \n  word",
    "hello\n\nworld",
    "tab\tseparated\tvalues",
    "end with newline\n",
    "I'm you're we've they'll she'd it's can't",
    "DON'T I'M YOU'RE IT'S",
    "it's'",
    "'ll'",
    "''''",
    "rock 'n' roll",
    "1234567890123456789",
    "3.14159 2,000,000 1e-10 0x1F",
    "?!?!... --- ;;; ***",
    "a.b.c/d_e-f",
    "😀",
    "👩‍👩‍👧‍👦 family",
    "👍🏽 thumbs",
    "🇫🇷🇯🇵",
    "日本語のテキスト、漢字とかな。",
    "中文 分词 测试",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Привет, мир!",
    "Ελληνικά κείμενα",
    "mixed日本語and English123",
    "non\u00a0breaking\u00a0space",
    "line\u2028separator",
    "ideographic\u3000space",
    "\ufeffbom at start",
    "zero\u200bwidth",
    "\u200d",
    "control\x00\x01\x07chars",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "text<|endoftext|>text",
    " <|endoftext|> ",
    "<|endoftext|",
    "<|endoftext",
    "<|",
    "a" * 200,
    "aaaa bbbb aaaa",
    "ab" * 50,
    "café naïve résumé",
    "cafe\u0301 nai\u0308ve",
    "𝐀𝐁𝐂 𝕏",
    "٣ ² ½ Ⅻ",
    "abc123def 456ghi",
    "fn main() { println!(\"hi\"); }",
    "https://example.com/path?q=1&r=2#frag",
    "    indented code\n        more",
    "The Verdict by Edith Wharton",
    # more whitespace placement: runs before words / at the end of text, mixed kinds
    "\t\tword",
    "\n\nword",
    "word \n",
    "word\t\n ",
    "a  \t\n\n  b",
    " \r\n \r\n",
    # contractions in odd places and mixed case
    "'s 'S 'Ve 'vE x'd'",
    "I'M'LL",
    # digits: long runs and mixes with letters
    "0000000000000000000000000000000000000000",
    "v1.2.3-rc4 x86_64 2024-01-01T12:00:00Z",
    # whitespace-like and invisible code points on their own
    "\u00a0",
    "\u00a0word",
    "\u2028",
    "\u3000\u3000x",
    "\ufeff",
    "a\u200db",
    "\x1b[31mred\x1b[0m\x7f",
    "\u0085next line",
    # more scripts: Hangul (precomposed and jamo), Thai, Devanagari with virama/nukta
    "\u1112\u1161\u11ab\u1100\u1173\u11af",
    "ภาษาไทย",
    "क़ि क्ष श्री",
    "👩🏿‍💻👨‍❤️‍👨",
    "<|endoftext|>\n<|endoftext|> <|endoftext|>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b",
    "abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc",
    "=" * 64 + "\n" + "-" * 33,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=default_data(), help="directory with the dataset files")
    parser.add_argument(
        "--out", default=str(REPO / "crates/ember-data/tests/data/tiktoken_reference.json")
    )
    args = parser.parse_args()
    data = Path(args.data)
    enc = gpt2_encoding(data)

    book_ids = encode(enc, BOOK)
    assert book_ids == [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252,
                        18250, 8812, 2114, 1659, 617, 34680, 27271, 13], book_ids
    verdict = (data / "the-verdict.txt").read_text(encoding="utf-8")
    v_tokens, v_sha = digest(enc, [verdict])
    assert v_tokens == 5145, v_tokens
    sms = sms_messages(data)
    assert len(sms) == 5574
    s_tokens, s_sha = digest(enc, sms)
    fields = instruction_fields(data)
    assert len(fields) == 3300
    i_tokens, i_sha = digest(enc, fields)

    out = {
        "comment": "made by scripts/tiktoken_reference.py (see its docstring to regenerate)",
        "tiktoken_version": tiktoken.__version__,
        "digest_definition": DIGEST_DEFINITION,
        "cases": [{"text": t, "ids": encode(enc, t)} for t in CASES],
        "the_verdict": {"tokens": v_tokens, "sha256": v_sha},
        "sms_spam": {"messages": len(sms), "tokens": s_tokens, "sha256": s_sha},
        "instruction_data": {"fields": len(fields), "tokens": i_tokens, "sha256": i_sha},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(CASES)} cases, verdict {v_tokens} tokens, "
          f"sms {s_tokens} tokens, instruction-data {i_tokens} tokens")


if __name__ == "__main__":
    main()
