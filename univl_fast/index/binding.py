"""An index is bound to the embedding space its vectors live in, not to an engine's files.

The engine manifest records ``embedding_space`` (a hash of the model weights, vocabulary and
preprocessing, and the embedding dim; ``univl_fast.export.manifest.embedding_space``). An
index records that space, the engine manifest's sha256 (for information) and the
``encoding`` of its corpus (precision, backend, text runtime). Loading:

- another space (other weights, other dim): refused with ``EngineMismatchError``;
- the same space, re-exported, with TensorRT plans added, another ``created`` date: loads;
- the same space, queries encoded at another precision or by another text runtime than the
  corpus: loads, and the difference is logged and kept on ``Index.encoding_mismatch``;
- an index (or engine) from before embedding spaces were recorded: bound by the engine
  manifest's sha256 as it was then, with a message saying how to bind it to the space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from univl_fast.index.params import EngineMismatchError

log = logging.getLogger(__name__)

_ENCODING_KEYS = ("precision", "text_runtime")


def encoder_fields(encoder: Any) -> dict[str, Any]:
    """What an index records about the encoder of its corpus (an Encoder or Engine-like
    object with ``manifest_sha256``, ``embedding_space`` and ``encoding``)."""
    return {
        "engine_sha256": getattr(encoder, "manifest_sha256", None),
        "embedding_space": getattr(encoder, "embedding_space", None),
        "encoding": dict(getattr(encoder, "encoding", None) or {}) or None,
    }


def space_key(encoder: Any) -> str | None:
    """What identifies the vectors an encoder makes: its embedding space id, or the engine
    manifest's sha256 for an engine exported before spaces were recorded."""
    space = getattr(encoder, "embedding_space", None)
    return space["id"] if space else getattr(encoder, "manifest_sha256", None)


def check_space(
    root: Path,
    manifest: dict[str, Any],
    space: dict[str, Any] | None,
    engine_sha256: str | None,
) -> None:
    """Refuse (``EngineMismatchError``) an index whose vectors are not in the engine's space."""
    recorded = manifest.get("embedding_space")
    if space and recorded:
        if recorded.get("id") != space.get("id") or int(recorded.get("dim", -1)) != int(
            space.get("dim", -2)
        ):
            raise EngineMismatchError(
                f"{root}: index vectors are in embedding space {recorded.get('id')} "
                f"(dim {recorded.get('dim')}), the engine encodes into {space.get('id')} "
                f"(dim {space.get('dim')}): another model; rebuild the index with "
                "`univl-fast index --engine <this engine>`"
            )
        return
    if engine_sha256 is None:
        return
    built_with = manifest.get("engine_sha256")
    why = (
        "the index predates embedding-space binding"
        if not recorded
        else "the engine gives no embedding space (exported before spaces were recorded)"
    )
    if built_with != engine_sha256:
        raise EngineMismatchError(
            f"{root}: index was built from engine manifest sha256 {built_with}, "
            f"but is being loaded with engine {engine_sha256}; {why}, so only the very same "
            "engine manifest matches: rebuild the index with `univl-fast index --engine <this "
            "engine>` (re-export an old engine first) to bind it to the model's embedding space"
        )
    if space is not None or not recorded:
        log.info(
            "%s: bound by engine manifest sha256 (%s); adding TensorRT plans or re-exporting "
            "the engine will invalidate it until it is rebuilt",
            root,
            why,
        )


def encoding_mismatch(manifest: dict[str, Any], encoding: dict[str, Any] | None) -> str | None:
    """A description of how the queries' encoding differs from the corpus's (None: same or
    unknown). Same space, so it is served, but scores mix two approximations of it."""
    if not encoding:
        return None
    corpus = dict(manifest.get("encoding") or {})
    if not corpus and (manifest.get("corpus") or {}).get("precision"):
        corpus = {"precision": manifest["corpus"]["precision"]}  # older index manifests
    diffs = [
        f"{key} {encoding.get(key)} (corpus: {corpus[key]})"
        for key in _ENCODING_KEYS
        if key in corpus and encoding.get(key) != corpus[key]
    ]
    if not diffs:
        return None
    return (
        "queries are encoded with " + ", ".join(diffs) + ": the same embedding space, but "
        "query and corpus vectors carry different rounding, so rankings can differ slightly "
        "from an index built at the query precision"
    )


def check_binding(root: Any, manifest: dict[str, Any], encoder: Any, engine_sha256: str | None):
    """EngineMismatchError unless the index's vectors are in ``encoder``'s embedding space;
    returns how the query encoding differs (None: same). ``root`` names the index in errors."""
    if encoder is not None:
        engine_sha256 = encoder.manifest_sha256
    check_space(root, manifest, getattr(encoder, "embedding_space", None), engine_sha256)
    return encoding_mismatch(manifest, getattr(encoder, "encoding", None))
