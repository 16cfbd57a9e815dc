"""``GET /docs``: Swagger UI from the package's own copy of swagger-ui-dist (``static/swagger-ui``,
with its licence), never from a CDN: it works offline, and no third-party script runs on the
origin whose ``localStorage`` holds the page's API key. Its Content-Security-Policy allows this
origin only (the validator badge, which would call validator.swagger.io, is off)."""

from __future__ import annotations

import functools
from importlib import resources

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response

from univl_fast.serve.auth import DOCS_STATIC

SWAGGER_UI_VERSION = "5.35.0"  # swagger-ui-dist, copied from the npm registry
# file name -> content type of the packaged files a browser may fetch
FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
    "NOTICE": "text/plain; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)


def docs_page(title: str, openapi_url: str = "/openapi.json") -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - API",
        swagger_js_url=f"{DOCS_STATIC}swagger-ui-bundle.js?v={SWAGGER_UI_VERSION}",
        swagger_css_url=f"{DOCS_STATIC}swagger-ui.css?v={SWAGGER_UI_VERSION}",
        swagger_favicon_url=f"{DOCS_STATIC}favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["content-security-policy"] = CSP
    page.headers["cache-control"] = "no-cache"
    return page


@functools.lru_cache(maxsize=len(FILES))
def _read(name: str) -> bytes:
    return (resources.files("univl_fast.serve") / "static" / "swagger-ui" / name).read_bytes()


def static_file(name: str) -> Response | None:
    """One of the packaged Swagger UI files (None for any other name)."""
    ctype = FILES.get(name)
    if ctype is None:
        return None
    return Response(
        _read(name), media_type=ctype, headers={"cache-control": "public, max-age=86400"}
    )
