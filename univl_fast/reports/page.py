"""``univl-fast report --workdir W``: one self-contained HTML page of a workdir's results.

Everything found in ``W`` goes on the page, each part only when present:

- the demo's evaluation table (``W/results.json``: rows of ``univl-fast eval`` JSON);
- the tables with error bars (``W/tables_seeds.md``, ``W/stats/tables_seeds.md`` or
  ``bench/results/tables_seeds.md``, written by ``bench/tables_stats.py``);
- figures: ``W/*.png`` (e.g. ``embeddings.png``, the paper's Figure 4) and the recall / QPS
  frontier ``index_frontier.png`` (from ``W`` or ``bench/results/``), inlined as data URIs;
- the benchmark summary (``W/data/synth_config.json``, the demo's stage timings);
- the machine it ran on (CPU, cores, memory, OS, Python and library versions).

Torch-free: it only reads files. Markdown is rendered by a small converter that knows what
these files use (headings, paragraphs, bullet lists, pipe tables, code spans, bold).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from univl_fast.errors import UnivlFastError

REPO = Path(__file__).resolve().parents[1]
STATS_MD = "tables_seeds.md"
FRONTIER = "index_frontier.png"
PACKAGES = (
    "univl-fast",
    "numpy",
    "torch",
    "onnxruntime",
    "faiss-cpu",
    "scikit-learn",
    "matplotlib",
)
EVAL_KEYS = ("MRR@10", "NDCG@10", "Recall@20", "image_share@10")

CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}h3{margin-top:1.3em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}td{white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal}th{background:#f3f3f3}
code{background:#f5f5f5;padding:0 3px;font-size:90%}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#555}
.muted{color:#666}
"""


class ReportError(UnivlFastError, ValueError):
    """The report cannot be made from this workdir."""


# ---------------------------------------------------------------------------- markdown
def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md: str) -> str:
    """The subset of markdown our result files use, as HTML (everything escaped)."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            i += 1
        elif s.startswith("#"):
            flush()
            level = min(len(s) - len(s.lstrip("#")) + 1, 6)  # the page's h1 is the title
            out.append(f"<h{level}>{_inline(s.lstrip('#').strip())}</h{level}>")
            i += 1
        elif s.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            flush()
            head = _cells(s)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append(_table(head, rows, escape=False))
        elif s.startswith(("- ", "* ")):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                item = [lines[i].strip()[2:]]
                i += 1
                while (
                    i < len(lines)
                    and lines[i].startswith("  ")
                    and lines[i].strip()
                    and not lines[i].strip().startswith(("- ", "* "))
                ):
                    item.append(lines[i].strip())
                    i += 1
                items.append(f"<li>{_inline(' '.join(item))}</li>")
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para.append(s)
            i += 1
    flush()
    return "\n".join(out)


def _table(head: list[str], rows: Iterable[list[str]], escape: bool = True) -> str:
    fmt = (lambda c: html.escape(str(c))) if escape else _inline
    th = "".join(f"<th>{fmt(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------- parts
def _png_data_uri(path: Path) -> str:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ReportError(f"report: {path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(path.name)}" src="{_png_data_uri(path)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def eval_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The demo's results.json rows as an HTML table (x100, Text / Image / Multi MRR@10)."""
    head = ["model / engine", *EVAL_KEYS, "Text MRR@10", "Image MRR@10", "queries"]
    body = []
    for label, r in rows.items():
        if not isinstance(r, Mapping):
            continue
        cells = [label]
        cells += [_pct(r.get(k)) for k in EVAL_KEYS]
        cells += [_pct((r.get(m) or {}).get("MRR@10")) for m in ("text", "image")]
        cells.append(str(r.get("queries", "-")))
        body.append(cells)
    return _table(head, body)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}"


def machine_info() -> dict[str, str]:
    """Where the report was made: CPU, cores, memory, OS, Python, library versions."""
    info = {
        "host OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": sys.version.split()[0],
        "CPU cores (os.cpu_count)": str(os.cpu_count()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["CPU"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    info["GPU"] = (
        "nvidia-smi present" if shutil.which("nvidia-smi") else "none found (no nvidia-smi)"
    )
    for pkg in PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return info


def _benchmark_summary(work: Path) -> str:
    parts = []
    data_dirs = [work / "data"]
    stats_json = work / "tables_stats.json"
    if stats_json.is_file():  # a bench/tables_stats.py output dir: the run's data
        st = json.loads(stats_json.read_text(encoding="utf-8"))
        data_dirs.append(Path(st.get("work", "")) / f"data_{st.get('scale', 'small')}")
    cfg_path = next(
        (
            p
            for p in (
                *(d / "synth_config.json" for d in data_dirs),
                *sorted(work.glob("data_*/synth_config.json")),
            )
            if p.is_file()
        ),
        None,
    )
    if cfg_path is not None:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        flat = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool))}
        parts.append(f"<p>Built-in benchmark: <code>{html.escape(str(cfg_path))}</code></p>")
        parts.append(_table(["setting", "value"], [[k, str(v)] for k, v in flat.items()]))
    state = work / "state"
    if state.is_dir():
        rows = []
        for p in sorted(state.glob("*.json"), key=lambda x: x.stat().st_mtime):
            secs = json.loads(p.read_text(encoding="utf-8")).get("seconds")
            if secs is not None:
                rows.append([p.stem, f"{float(secs):.1f}"])
        if rows:
            parts.append("<p>Demo stages (wall seconds on the machine below):</p>")
            parts.append(_table(["stage", "seconds"], rows))
    return "\n".join(parts)


def _find_stats(work: Path) -> Path | None:
    for p in (work / STATS_MD, work / "stats" / STATS_MD, REPO / "bench" / "results" / STATS_MD):
        if p.is_file():
            return p
    return None


def build_report(work: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Write the HTML page for ``work`` (default ``W/report.html``); returns its path."""
    work = Path(work).resolve()
    if not work.is_dir():
        raise ReportError(f"report: --workdir {work} is not a directory")
    own = [
        work / "results.json",
        work / STATS_MD,
        work / "stats" / STATS_MD,
        work / "tables_stats.json",
    ]
    if not (
        any(p.is_file() for p in own)
        or any(work.glob("*.png"))
        or (work / "data" / "synth_config.json").is_file()
    ):
        raise ReportError(
            f"report: nothing to show in {work} (no results.json, {STATS_MD}, *.png or "
            "data/synth_config.json)"
        )
    sections: list[str] = []
    results = work / "results.json"
    if results.is_file():
        rows = json.loads(results.read_text(encoding="utf-8"))
        if isinstance(rows, Mapping) and "table3" not in rows:
            sections.append("<h2>Retrieval quality (test split)</h2>")
            sections.append(
                '<p class="muted">x100; MRR@10 / NDCG@10 / Recall@20 / image share over the joint '
                "corpus (Multi); Text and Image: the paper's single-modality settings.</p>"
            )
            sections.append(eval_table(rows))
    stats = _find_stats(work)
    if stats is not None:
        where = (
            ""
            if work in stats.parents
            else " (recorded results of the repository, not made in this workdir)"
        )
        sections.append(f'<p class="muted">From <code>{html.escape(str(stats))}</code>{where}</p>')
        sections.append(markdown_to_html(stats.read_text(encoding="utf-8")))
    figures = sorted(p for p in work.glob("*.png") if p.name != FRONTIER)
    frontier = next(
        (p for p in (work / FRONTIER, REPO / "bench" / "results" / FRONTIER) if p.is_file()), None
    )
    if figures or frontier:
        sections.append("<h2>Figures</h2>")
        for p in figures:
            meta = p.with_suffix(".json")
            cap = p.name
            if meta.is_file():
                m = json.loads(meta.read_text(encoding="utf-8"))
                if "projection" in m:
                    cap = (
                        f"{p.name}: embedding space of {m.get('n_per_kind')} queries, text docs and "
                        f"image docs per model ({m['projection']}, seed {m.get('seed')}), the paper's Figure 4"
                    )
            sections.append(_figure(p, cap))
        if frontier is not None:
            sections.append(_figure(frontier, f"{frontier.name}: index recall / QPS frontier"))
    bench = _benchmark_summary(work)
    if bench:
        sections.append("<h2>Benchmark</h2>")
        sections.append(bench)
    sections.append("<h2>Machine</h2>")
    sections.append(_table(["", ""], [[k, v] for k, v in machine_info().items()]))
    name = title or f"UniVL-DR results: {work.name}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(name)}</h1><p class="muted">Generated {stamp} by '
        f"<code>univl-fast report --workdir {html.escape(str(work))}</code></p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    out_path = Path(out) if out else work / "report.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return out_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a demo workdir or a stats output dir")
    p.add_argument("--out", help="HTML file to write (default WORKDIR/report.html)")
    p.add_argument("--title", help="page title")


def run(args: argparse.Namespace) -> int:
    path = build_report(args.workdir, args.out, args.title)
    print(path)
    return 0


__all__ = ["ReportError", "build_report", "eval_table", "machine_info", "markdown_to_html"]
