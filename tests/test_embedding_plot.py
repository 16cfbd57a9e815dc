"""``univl-fast plot embeddings`` (the paper's Figure 4): sampling, t-SNE, panels, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="needs the [report] extra (scikit-learn)")
pytest.importorskip("matplotlib", reason="needs the [report] extra (matplotlib)")

from univl_fast.reports.embedding_plot import (  # noqa: E402
    PlotInputError,
    project_2d,
    sample_items,
    strategy_title,
)


def test_sample_is_fixed_by_the_seed(synth_tiny):
    a, b = sample_items(synth_tiny, n=10, seed=0), sample_items(synth_tiny, n=10, seed=0)
    assert a == b
    assert len(a.qids) == len(a.text_ids) == len(a.image_ids) == 10
    assert len(set(a.image_ids)) == 10
    c = sample_items(synth_tiny, n=10, seed=1)
    assert c.qids != a.qids and c.image_ids != a.image_ids
    with pytest.raises(PlotInputError, match="fewer than n=1000"):
        sample_items(synth_tiny, n=1000)


def test_tsne_keeps_separated_groups_apart():
    """Three tight clusters in 64-D stay three groups in 2-D: every point's nearest 2-D
    neighbour is from its own cluster."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 64)) * 5
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 64)) for c in centres])
    labels = np.repeat(np.arange(3), 20)
    y = project_2d(x, seed=0)
    assert y.shape == (60, 2) and np.isfinite(y).all()
    d = np.linalg.norm(y[:, None] - y[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).all()
    np.testing.assert_array_equal(project_2d(x, seed=0), y)  # deterministic
    with pytest.raises(PlotInputError, match="n >= 4"):
        project_2d(x[:3])


def test_strategy_title(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "train_config.json").write_text(
        json.dumps({"stage": "hardneg", "negatives": "texts", "inbatch": True, "captions": "exp"})
    )
    assert strategy_title(ck) == "Only texts + in-batch (exp captions)"
    (ck / "train_config.json").write_text(json.dumps({"stage": "inbatch", "inbatch": False}))
    assert strategy_title(ck) == "In-batch (CLIP-DPR)"


def test_plot_cli_two_panels(tmp_path, synth_tiny, random_tiny_checkpoint):
    from PIL import Image

    from univl_fast.cli import main

    out = tmp_path / "fig.png"
    argv = ["plot", "embeddings", "--data", str(synth_tiny), "--out", str(out), "--n", "10"]
    argv += ["--checkpoint", str(random_tiny_checkpoint), "--label", "A"]
    argv += ["--checkpoint", str(random_tiny_checkpoint), "--label", "B"]
    assert main(argv) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height > 200  # two panels side by side
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [p["title"] for p in meta["panels"]] == ["A", "B"]
    assert meta["kinds"].count("query") == meta["kinds"].count("image") == 10
    # the same model on the same items: the same points in both panels
    np.testing.assert_allclose(meta["panels"][0]["points"], meta["panels"][1]["points"])
    assert np.asarray(meta["panels"][0]["points"]).shape == (30, 2)
    with pytest.raises(PlotInputError, match="2 --label for 1 --checkpoint"):
        main(
            [*argv[:8], "--checkpoint", str(random_tiny_checkpoint), "--label", "A", "--label", "B"]
        )
