"""Who may ask: the optional bearer API key (compared in constant time) and the Host allow-list.

``/health`` and ``/ready`` (probes) stay open; so do the page and the API docs (with their
packaged Swagger UI files), which hold no data (the page asks for the key when the API answers
401). Every other path needs ``Authorization: Bearer <key>`` when a key is configured, and is
refused with 401 before its body is read or any work is done.
"""

from __future__ import annotations

import hmac

# Paths a load balancer or a person's browser reaches without the key.
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/favicon.ico", "/docs", "/openapi.json"})
# Swagger UI's files, served from the package (univl_fast.serve.swagger)
DOCS_STATIC = "/docs/static/"
# Answered whatever the Host header says (load balancers probe by address).
PROBE_PATHS = frozenset({"/health", "/ready"})


def needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and not path.startswith(DOCS_STATIC)


def host_allowed(host: bytes | None, allowed: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``) names one of
    ``allowed`` (lower-case names, IPv6 without brackets)."""
    if not host:
        return False
    name = host.decode("latin-1").strip().lower()
    if name.startswith("["):  # [::1]:8080
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".") in allowed


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None when absent)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(authorization: bytes | None, api_key: bytes) -> bool:
    """True when the header carries ``api_key``. Compares in constant time (hmac.compare_digest)
    so the answer time tells nothing about how much of a guess was right."""
    token = bearer_token(authorization)
    # compare against the key even when no token came, so both paths take the same time
    return hmac.compare_digest(token or b"", api_key) and token is not None
