"""Limits and settings of the HTTP service (``ServeConfig``), with the defaults a user expects.

Every limit answers with a status code a client can act on: a body over ``max_body_bytes`` gets
413, too many inputs, a ``k`` over ``max_k`` or a query, text input or caption over
``max_query_chars`` 422, a body that does not arrive within ``body_timeout_s`` 408, a request
not answered within ``request_timeout_s`` 504, and a full queue 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from univl_fast.errors import UnivlFastError

log = logging.getLogger("univl_fast.serve")

# The image tower refuses more pixels than this per item (a decompression bomb is refused
# without being decoded); 40 MP covers a full-size phone photo.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class ServeConfigError(UnivlFastError, ValueError):
    """A serve setting is out of range (the message names the setting and the value)."""


@dataclass
class ServeConfig:
    """How the service limits and answers requests (saved in ``GET /info``)."""

    max_body_bytes: int = 2 * 1024 * 1024  # request body; larger -> 413 before it is read
    max_inputs: int = 64  # queries per search, inputs per embeddings request; more -> 422
    max_k: int = 100  # hits per query; more -> 422
    max_query_chars: int = 2048  # characters per query, text input or caption; longer -> 422
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # per image; more -> 400, not decoded
    request_timeout_s: float = 10.0  # deadline of one search / embeddings request -> 504
    body_timeout_s: float = 10.0  # the whole body must arrive within this -> 408
    # Requests admitted at once per worker process (running or waiting for the engine); one
    # more is answered 429 at once. The engine's own bound (queries waiting for its batcher,
    # univl_fast.load(..., max_queue=...)) raises Overloaded, also answered 429.
    max_queue: int = 64
    retry_after_s: float = 1.0  # the Retry-After a 429 carries (rounded up to whole seconds)
    graceful_timeout_s: float = 30.0  # on SIGTERM, in-flight requests get this long to finish
    api_key: str | None = field(default=None, repr=False)  # bearer key; None = open service
    data_dir: str | None = None  # dataset dir: doc snippets and thumbnails for the page
    # one JSON line per request on the univl_fast.serve.access logger (off by default: a log
    # line per request is a measurable share of the CPU of a cheap request)
    access_log: bool = False
    # Host header values answered (DNS rebinding: a web page cannot read a localhost service
    # through a name of its own); "*" answers any. The CLI's default: the bound host and
    # localhost. The probes (/health, /ready) answer any Host.
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    # Decoded image pixels in flight per worker process, all requests together (40 MP of RGB
    # is ~120 MB decoded); an image batch waits for its share within the request's deadline.
    max_decoded_pixels: int = 2 * DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        positive = (
            "max_body_bytes",
            "max_inputs",
            "max_k",
            "max_query_chars",
            "max_image_pixels",
            "max_queue",
            "max_decoded_pixels",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"serve setting {name} must be an int >= 1, got {value!r}")
        for name in ("request_timeout_s", "body_timeout_s", "graceful_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ServeConfigError(f"serve setting {name} must be > 0 seconds, got {value!r}")
        if not isinstance(self.retry_after_s, (int, float)) or self.retry_after_s < 0:
            raise ServeConfigError(
                f"serve setting retry_after_s must be >= 0, got {self.retry_after_s!r}"
            )
        if self.max_decoded_pixels < self.max_image_pixels:
            raise ServeConfigError(
                f"serve setting max_decoded_pixels ({self.max_decoded_pixels}) must be >= "
                f"max_image_pixels ({self.max_image_pixels}): one image must fit the budget"
            )
        hosts = self.allowed_hosts
        if isinstance(hosts, str) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ServeConfigError(
                f"serve setting allowed_hosts must be a non-empty tuple of host names, got "
                f"{hosts!r}"
            )
        self.allowed_hosts = tuple(h.strip().lower().strip("[]") for h in hosts)
        if self.api_key is not None and not self.api_key:
            raise ServeConfigError("serve setting api_key must not be empty (None disables auth)")

    def public_dict(self) -> dict[str, Any]:
        """The settings without the API key (what ``/info`` shows)."""
        out = asdict(self)
        out.pop("api_key")
        out["auth"] = self.api_key is not None
        return out


def read_api_key_file(path: str | os.PathLike) -> str:
    """The API key in ``path``: its first non-empty line, surrounding whitespace (and a UTF-8
    byte-order mark) removed. Logs a warning when others than the owner may read the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ServeConfigError(f"--api-key-file {p}: no such file") from None
    except IsADirectoryError:
        raise ServeConfigError(f"--api-key-file {p}: is a directory, not a file") from None
    except PermissionError:
        raise ServeConfigError(
            f"--api-key-file {p}: permission denied (the service's user cannot read it)"
        ) from None
    except OSError as exc:
        raise ServeConfigError(f"--api-key-file {p}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not part of the key
    except UnicodeDecodeError:
        raise ServeConfigError(f"--api-key-file {p}: not UTF-8 text") from None
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "--api-key-file %s: others than its owner may read it (mode %o); chmod 600 it",
            p,
            stat.S_IMODE(mode),
        )
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise ServeConfigError(f"--api-key-file {p}: the file holds no key (it is empty)")
