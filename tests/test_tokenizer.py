"""Our torch-free CLIP BPE tokenizer against open_clip's (the reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

from univl_fast.runtime.tokenizer import ClipTokenizer  # noqa: E402

EDGE_TEXTS = [
    "",
    " ",
    "\n\t  \r\n",
    "a",
    "A",
    "hello world",
    "Café naïve résumé Ångström",
    "東京タワーの高さは何メートルですか？",
    "中文 한국어 ภาษาไทย العربية עברית",
    "😀🎉 emoji 👍🏽 👨‍👩‍👧‍👦 flags 🇫🇷",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot; &#39;x&#39; &nbsp;",
    "<b>html tags</b> <br/>",
    "3.14159 1,000,000 2024-01-01 +49 (0) 30 123456",
    "It's they're we've I'm you'll he'd IT'S THEY'RE",
    "<start_of_text>x<end_of_text>",
    "ÃƒÂ© mojibake Ã©",
    "line1\nline2\r\nline3\rline4",
    "tabs\tand\x0bvertical\x0cfeeds",
    "zero\u200bwidth\u00adsoft hyphen",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ",
    "e\u0301 combining",
    "!!!???...---",
    "x " * 80,
    ("word " * 30 + "\n") * 300,
    "é\n\u0301abc",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,;:!?'\"-&#<>()[]/\\ "
        "éèüöñçßøåæ 東京日本中文 한국어 😀🎉👍 \n\t &amp; &lt;"
    )
    words = [
        "the",
        "photo",
        "of",
        "a",
        "cat",
        "on",
        "roof",
        "Eiffel",
        "tower",
        "colour",
        "what's",
        "1920s",
        "New-York",
        "café",
        "São Paulo",
    ]
    out = []
    for i in range(n):
        if i % 2:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 90))))
    return out


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    from open_clip.tokenizer import default_bpe

    return ClipTokenizer(default_bpe())


def test_matches_open_clip_on_edge_and_random_texts(tok):
    texts = EDGE_TEXTS + random_texts(400)
    ref = open_clip.tokenize(texts).numpy()
    ours = tok.tokenize_padded(texts)
    bad = [(i, texts[i][:40]) for i in range(len(texts)) if not np.array_equal(ref[i], ours[i])]
    assert not bad, f"{len(bad)} texts differ from open_clip, e.g. {bad[:3]}"


def test_matches_get_tokenizer(tok):
    ref_tok = open_clip.get_tokenizer("ViT-B-32")
    texts = random_texts(50, seed=1)
    assert np.array_equal(ref_tok(texts).numpy(), tok.tokenize_padded(texts))


@pytest.mark.parametrize("n_content", [0, 1, 2, 74, 75, 76, 77, 200])
def test_lengths_and_truncation(tok, n_content):
    # "x" is one token; n content tokens -> n + 2 ids, capped at 77 with eot last
    text = " ".join(["x"] * n_content)
    ids, lengths = tok([text])
    expected_len = min(n_content + 2, 77)
    assert lengths.tolist() == [expected_len]
    assert ids.shape == (1, expected_len)
    assert ids[0, 0] == tok.sot_token_id and ids[0, -1] == tok.eot_token_id
    assert np.array_equal(tok.tokenize_padded([text]), open_clip.tokenize([text]).numpy())


def test_batch_is_trimmed_to_longest(tok):
    texts = ["a", "a photo of a cat", ""]
    ids, lengths = tok(texts)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.shape == (3, int(lengths.max()))
    full = open_clip.tokenize(texts).numpy()
    assert np.array_equal(ids, full[:, : ids.shape[1]])
    assert (full[:, ids.shape[1] :] == 0).all()


def test_100k_char_texts_equal_open_clip(tok):
    one_line = ("The quick brown fox jumps over the lazy dog, café naïve 東京 &amp; more. " * 1500)[
        :100_000
    ]
    many_lines = ("The quick brown fox &amp; the lazy dog, café.\n" * 3000)[:100_000]
    html_late = "short start\n" + "x\n" * 40 + "&amp;amp; <tag> " * 5000
    for text in (one_line, many_lines, html_late, "a" * 100_000, " " * 100_000):
        assert np.array_equal(tok.tokenize_padded([text]), open_clip.tokenize([text]).numpy())


def test_not_a_merges_file(tmp_path):
    import gzip

    bad = tmp_path / "vocab.txt.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("header\nonly a few\n")
    with pytest.raises(ValueError, match="not a CLIP BPE merges file"):
        ClipTokenizer(bad)
