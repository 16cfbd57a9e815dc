"""CLIP's byte-level BPE tokenizer, torch-free and open_clip-free.

Behaviour mirrors open_clip 3.x ``SimpleTokenizer`` (clean = "lower"), written for this
project from the algorithm:

1. clean: ``ftfy.fix_text``, HTML-unescape twice, strip; collapse whitespace; lowercase.
2. pre-tokenize with CLIP's regex (special tokens, English contractions, letter runs, single
   digits, runs of other non-space symbols), case-insensitive.
3. map each pre-token's UTF-8 bytes to printable unicode (``bytes_to_unicode``), then apply
   BPE merges by rank (the last symbol carries the ``</w>`` end-of-word marker).
4. ``[sot] + ids + [eot]``; longer than the context: keep the first ``context_length`` and
   overwrite the last with ``eot`` (open_clip 3.x truncation).

Long texts stop early: ftfy works line by line (a line's result never depends on later
lines) and HTML entities, whitespace and the regex never cross a line break, so cleaning a
prefix of whole lines yields exactly the prefix of the full token stream. Once
``context_length - 2`` content tokens are known, the rest of the text cannot change the
result and is not processed.

One long line or one long word is bounded too (so a 2 MB caption costs milliseconds, not
hours): with a token limit, a line is cut at ``_LONG_LINE_CHARS`` before cleaning (ftfy itself
works on pieces of 1 Mi characters), and a pre-token longer than ``_LONG_PIECE`` is
BPE-merged on a prefix only, long enough that the ids kept end ``_PIECE_MARGIN`` ids before the
cut (BPE merges are local: a cut changes the ids next to it, not those far before; the prefix
doubles until this holds). Words of any length are merged in O(n log n) (a heap of candidate
pairs), giving the same ids as the textbook loop.

The vocabulary is the ``bpe_simple_vocab_16e6.txt.gz`` merges file, copied into the engine
directory (``tokenizer/``) at export time.
"""

from __future__ import annotations

import functools
import gzip
import heapq
import html
import os
from collections.abc import Sequence

import ftfy
import numpy as np
import regex

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
SOT = "<start_of_text>"
EOT = "<end_of_text>"
# Number of merges CLIP uses from the file (its vocabulary is 49408 = 512 + merges + 2).
_NUM_MERGES = 49152 - 256 - 2
# Texts longer than this are cleaned a chunk of whole lines at a time (see module doc).
_LONG_TEXT_CHARS = 4096
_CACHE_LIMIT = 200_000
# With a token limit: a line is cut at this many characters before cleaning.
_LONG_LINE_CHARS = 65_536
# Pre-tokens longer than this (bytes) are merged with the heap (and, with a limit, by prefix).
_LONG_PIECE = 64
# Prefix BPE of a long pre-token: the ids kept end at least this many ids before the cut.
_PIECE_MARGIN = 16


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> printable unicode char; printable latin-1 bytes map to themselves."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _clean(text: str) -> str:
    """open_clip's "lower" clean: basic clean, whitespace collapse, lowercase."""
    return " ".join(_basic_clean(text).split()).lower()


class ClipTokenizer:
    """CLIP BPE tokenizer over a merges file.

    ``encode(text)`` -> list of content ids (no sot/eot, no truncation);
    ``__call__(texts)`` -> (ids int64 (n, L), lengths int64 (n,)) with ``L`` = the longest
    real sequence of the batch (sot..eot inclusive), zero-padded; ``tokenize_padded`` pads to
    the context length exactly like ``open_clip.tokenize``.
    """

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        with gzip.open(vocab_path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_path}: not a CLIP BPE merges file ({len(merges)} merges)")
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)
        self.vocab_path = str(vocab_path)
        self._cache: dict[str, tuple[int, ...]] = {
            SOT: (self.sot_token_id,),
            EOT: (self.eot_token_id,),
        }
        self._pat = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    # -- BPE ---------------------------------------------------------------------------
    def _bpe(self, token: str) -> tuple[int, ...]:
        """Byte-encoded pre-token -> vocabulary ids (cached)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        symbols = list(token[:-1]) + [token[-1] + "</w>"]
        word = self._merge_heap(symbols) if len(token) > _LONG_PIECE else self._merge(symbols)
        ids = tuple(self.encoder[w] for w in word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {SOT: (self.sot_token_id,), EOT: (self.eot_token_id,)}
        self._cache[token] = ids
        return ids

    def _merge(self, word: list[str]) -> list[str]:
        """BPE: merge the best-ranked adjacent pair everywhere (left to right), until none
        is in the merges (O(n^2): for short words)."""
        ranks = self.bpe_ranks
        while len(word) > 1:
            best_rank, best = None, None
            for pair in zip(word, word[1:], strict=False):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i, n = 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _merge_heap(self, word: list[str]) -> list[str]:
        """The same merges as ``_merge`` in O(n log n): candidate pairs in a heap ordered by
        (rank, position), symbols in a linked list. Same result: all pairs of the best rank are
        one pair (a, b), merged left to right, and a merge never makes another (a, b)."""
        ranks = self.bpe_ranks
        sym = list(word)
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get((sym[i], sym[i + 1]))
            if r is not None:
                heap.append((r, i, sym[i], sym[i + 1]))
        heapq.heapify(heap)
        alive = [True] * n
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or sym[i] != a or j < 0 or sym[j] != b:
                continue  # stale: one side was merged since
            sym[i] = a + b
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k >= 0:
                prv[k] = i
                r = ranks.get((sym[i], sym[k]))
                if r is not None:
                    heapq.heappush(heap, (r, i, sym[i], sym[k]))
            p = prv[i]
            if p >= 0:
                r = ranks.get((sym[p], sym[i]))
                if r is not None:
                    heapq.heappush(heap, (r, p, sym[p], sym[i]))
        return [s for s, live in zip(sym, alive, strict=True) if live]

    def _bpe_prefix(self, piece: str, need: int) -> list[int]:
        """The first ``need`` ids of a long pre-token, merging a prefix of it only (see the
        module doc); the whole pre-token once the prefix would reach its end."""
        enc = self.byte_encoder
        size = 4 * (need + _PIECE_MARGIN)
        while size < len(piece):
            token = "".join(enc[b] for b in piece[:size].encode("utf-8"))  # no </w>: mid-word
            ids = [self.encoder[w] for w in self._merge_heap(list(token))]
            if len(ids) >= need + _PIECE_MARGIN:
                return ids[:need]
            size *= 2
        return list(self._bpe("".join(enc[b] for b in piece.encode("utf-8"))))

    def _take(self, cleaned: str, limit: int | None) -> list[int]:
        out: list[int] = []
        enc = self.byte_encoder
        for m in self._pat.finditer(cleaned):
            piece = m.group()
            if limit is not None and len(piece) > _LONG_PIECE:
                out.extend(self._bpe_prefix(piece, limit - len(out)))
            else:
                out.extend(self._bpe("".join(enc[b] for b in piece.encode("utf-8"))))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    # -- public ------------------------------------------------------------------------
    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Content token ids of ``text`` (no sot/eot); at most ``limit`` ids when given.

        With ``limit`` the result equals ``encode(text)[:limit]`` but long texts are only
        processed as far as needed (whole lines at a time).
        """
        if limit is None or len(text) <= _LONG_TEXT_CHARS:
            return self._take(_clean(text), limit)
        if len(text) > _LONG_LINE_CHARS:
            lines = text.split("\n")
            if any(len(line) > _LONG_LINE_CHARS for line in lines):
                text = "\n".join(line[:_LONG_LINE_CHARS] for line in lines)
        end = _LONG_TEXT_CHARS
        while True:
            cut = text.find("\n", end - 1)
            if cut < 0 or cut + 1 >= len(text):
                return self._take(_clean(text), limit)
            ids = self._take(_clean(text[: cut + 1]), limit)
            if len(ids) >= limit:
                return ids
            end = 2 * (cut + 1)

    def token_ids(self, text: str, context_length: int | None = None) -> list[int]:
        """``[sot] + ids + [eot]``, truncated to the context length like open_clip 3.x."""
        ctx = context_length or self.context_length
        ids = [self.sot_token_id, *self.encode(text, limit=ctx - 1), self.eot_token_id]
        if len(ids) > ctx:
            ids = ids[:ctx]
            ids[-1] = self.eot_token_id
        return ids

    def __call__(
        self, texts: Sequence[str], context_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize a batch, trimmed to its longest real sequence.

        Returns ``ids`` int64 (n, L) zero-padded and ``lengths`` int64 (n,), where
        ``L = max(lengths)`` (>= 2: every row holds at least sot and eot).
        """
        rows = [self.token_ids(t, context_length) for t in texts]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max()) if len(rows) else 2
        ids = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, lengths

    def tokenize_padded(
        self, texts: Sequence[str], context_length: int | None = None
    ) -> np.ndarray:
        """int64 (n, context_length), zero-padded: the same array ``open_clip.tokenize`` gives."""
        ctx = context_length or self.context_length
        ids, _ = self(texts, ctx)
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        out[:, : ids.shape[1]] = ids
        return out
