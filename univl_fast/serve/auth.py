"""Optional bearer API key, compared in constant time.

``/health`` and ``/ready`` (probes) stay open; so do the page and the API docs, which hold no
data (the page asks for the key when the API answers 401). Every other path needs
``Authorization: Bearer <key>`` when a key is configured, and is refused with 401 before its
body is read or any work is done.
"""

from __future__ import annotations

import hmac

# Paths a load balancer or a person's browser reaches without the key.
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
)


def needs_key(path: str) -> bool:
    return path not in OPEN_PATHS


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
