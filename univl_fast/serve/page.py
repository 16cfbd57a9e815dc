"""The search page (``GET /``): one self-contained HTML file with its CSS and JS inline (no CDN,
so it works on a machine without internet), shipped as package data."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=2)
def page_html(has_docs: bool) -> str:
    """The page; ``has_docs``: the service has the dataset (snippets and thumbnails)."""
    html = (resources.files("univl_fast.serve") / "static" / "index.html").read_text("utf-8")
    return html.replace("__HAS_DOCS__", "1" if has_docs else "0")
