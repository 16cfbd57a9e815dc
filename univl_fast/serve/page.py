"""The search page (``GET /``): one self-contained HTML file with its CSS and JS inline (no CDN,
so it works on a machine without internet), shipped as package data."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=1)
def page_html() -> str:
    return (resources.files("univl_fast.serve") / "static" / "index.html").read_text("utf-8")
