"""``univl-fast report``: the self-contained HTML page, checked in a real headless Chromium
(it renders, every image decodes, the tables are there), plus its markdown subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_serve_page import WAIT_S, browser  # noqa: F401  (the Chromium fixture)
from univl_fast.evaluation.metrics import KEYS
from univl_fast.reports.page import ReportError, build_report, markdown_to_html

STATS_MD = """# Tables with error bars

Cells: mean ± sd over **seeds**; `bench/tables_stats.py`.

## Table 3 shape

| row | n | Multi MRR@10 |
|---|---|---|
| In-batch | 3 | 65.69 ± 0.80 |
| Balanced + in-batch | 2 | 71.50 ± 1.10 |

- first claim: reproduced
  (continued line)
- second <claim> & more
"""


def _workdir(tmp_path):
    pytest.importorskip("matplotlib", reason="needs the [report] extra")
    from univl_fast.reports.embedding_plot import draw_panels

    work = tmp_path / "w"
    (work / "data").mkdir(parents=True)
    block = {k: 0.5 for k in KEYS} | {"queries": 500}
    rows = {"PyTorch stage 2": block | {"text": block, "image": block | {"MRR@10": 0.75}}}
    (work / "results.json").write_text(json.dumps(rows))
    (work / "tables_seeds.md").write_text(STATS_MD)
    (work / "data" / "synth_config.json").write_text(json.dumps({"scale": "tiny", "seed": 0}))
    rng = np.random.default_rng(0)
    kinds = np.array(["query"] * 5 + ["text"] * 5 + ["image"] * 5)
    draw_panels([rng.standard_normal((15, 2))] * 2, kinds, ["a", "b"], work / "embeddings.png")
    return work


def test_markdown_subset():
    out = markdown_to_html(STATS_MD)
    assert out.count("<table>") == 1 and out.count("<tr>") == 3
    assert "<td>71.50 ± 1.10</td>" in out
    assert "<li>first claim: reproduced (continued line)</li>" in out
    assert "second &lt;claim&gt; &amp; more" in out  # escaped
    assert "<strong>seeds</strong>" in out and "<code>bench/tables_stats.py</code>" in out
    assert "<h2>Tables with error bars</h2>" in out


def test_report_needs_something_to_show(tmp_path):
    with pytest.raises(ReportError, match="nothing to show"):
        build_report(tmp_path)
    with pytest.raises(ReportError, match="not a directory"):
        build_report(tmp_path / "missing")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(ReportError, match="not a PNG"):
        build_report(tmp_path)


def test_report_renders_in_chromium(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from univl_fast.cli import main

    work = _workdir(tmp_path)
    assert main(["report", "--workdir", str(work), "--title", "T"]) == 0
    page = work / "report.html"
    text = page.read_text()
    assert 'src="http' not in text and 'href="http' not in text  # self-contained
    browser.get(page.as_uri())
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    assert browser.title == "T"
    imgs = browser.find_elements(By.TAG_NAME, "img")
    assert len(imgs) >= 1
    for img in imgs:
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert (
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            > 100
        )
    tables = browser.find_elements(By.TAG_NAME, "table")
    # the eval table, the stats table, the benchmark settings, the machine
    assert len(tables) == 4
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "71.50 ± 1.10" in body and "75.00" in body  # stats cell; Image MRR@10 of the row
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert {"Figures", "Benchmark", "Machine"} <= set(headings)


def test_report_is_torch_free(tmp_path):
    from tests.test_torch_free import run_blocked

    work = _workdir(tmp_path)
    proc = run_blocked(
        f"""
        from univl_fast.cli import main
        assert main(["report", "--workdir", {str(work)!r}]) == 0
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip")]
        assert not bad, bad
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "report.html").is_file()
