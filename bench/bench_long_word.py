"""The CLIP tokenizer on one long word (issue 23: a caption of one 2 MB "word" took hours), the
serving path's worst case. A fresh random word per try (no cache hits); best of 3 per length.

    .venv/bin/python bench/bench_long_word.py ENGINE_DIR/tokenizer/bpe_simple_vocab_16e6.txt.gz

Run it on the old code (``git worktree add /tmp/old main``, same command with PYTHONPATH=/tmp/old)
for the baseline (skip the 2 MB word there: --max-length 16000).
"""

from __future__ import annotations

import argparse
import random
import string
import time

from univl_fast.runtime.tokenizer import ClipTokenizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("vocab", help="bpe_simple_vocab_16e6.txt.gz")
    p.add_argument("--lengths", default="1000,4000,16000,2000000")
    p.add_argument("--max-length", type=int, default=None, help="skip longer words")
    args = p.parse_args()
    tok = ClipTokenizer(args.vocab)
    rng = random.Random(0)
    for n in (int(x) for x in args.lengths.split(",")):
        if args.max_length is not None and n > args.max_length:
            print(f"{n:>9} letters: skipped (--max-length)")
            continue
        times = []
        for _ in range(3):
            word = "".join(rng.choices(string.ascii_lowercase, k=n))
            t0 = time.perf_counter()
            tok.token_ids(word)
            times.append(time.perf_counter() - t0)
        print(f"{n:>9} letters: {min(times) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
