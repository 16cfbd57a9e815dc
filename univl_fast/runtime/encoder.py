"""``Encoder``: the engine directory's towers behind the UniVL-DR encoding rules (torch-free).

- queries / text docs: CLIP BPE (our own tokenizer) -> text graph -> L2-normalized rows.
- image docs (paper Eq. 3): image graph(picture) + text graph(caption), summed RAW, then
  L2-normalized by the fused compiled op ``univl_fast.ops.combine_image_docs``.

Text batches are cut to their longest real sequence; document batches are length-bucketed
(sorted by token length, run in batches, original order restored) so short docs never pay
for a long neighbour's padding.

Input rules (each item is judged alone; one bad item never loses the others):
- text must be ``str`` (or UTF-8 ``bytes``, decoded strictly). Invalid UTF-8 bytes, a string
  holding lone surrogates (not encodable as UTF-8) or a non-text object is a per-item error.
- empty / whitespace-only text encodes the empty sequence ``[sot, eot]`` (what open_clip
  gives), documented rather than refused: a caption may legitimately be empty.
- longer than the context (77 tokens): truncated exactly like open_clip (first 76 ids +
  eot); very long texts stop being processed once the 77 tokens are known.
- images: paths, bytes or PIL images decoded by ``univl_fast.imageio.load_rgb`` (grayscale,
  CMYK, RGBA, palette, 16-bit handled; zero-byte, corrupt, truncated and decompression bombs
  refused with the reason).

``on_error="raise"`` (default) raises :class:`EncodeError` listing every bad item (index +
reason) and carrying the embeddings of the good ones; ``on_error="skip"`` returns an
:class:`EncodeResult` with the good rows, their indices and the errors.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from univl_fast.errors import UnivlFastError
from univl_fast.imageio import ImageSource
from univl_fast.runtime import selection, verify_load
from univl_fast.runtime.backends import (
    BackendUnavailable,
    ThreadSettings,
    open_tower,
    resolve_backend,
    tensorrt_plans_problem,
)
from univl_fast.runtime.manifest import (
    EngineError,
    load_manifest,
    manifest_sha256,
    verify_file,
)
from univl_fast.runtime.preprocess import ImagePreprocessor, PreprocessConfig
from univl_fast.runtime.tokenizer import ClipTokenizer
from univl_fast.utils.env import env_flag

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
# per native tower: the knob that keeps auto off it, the manifest key of why it was not written
_NATIVE_KNOB = {"text": "UNIVL_FAST_NATIVE_TEXT", "image": "UNIVL_FAST_NATIVE_IMAGE"}
_NATIVE_REASON = {"text": "reason", "image": "image_reason"}


@dataclass
class ItemError:
    """One input that could not be encoded."""

    index: int
    reason: str

    def __str__(self) -> str:
        return f"item {self.index}: {self.reason}"


@dataclass
class EncodeResult:
    """Embeddings of the good items (rows in input order) and what went wrong with the rest."""

    embeddings: np.ndarray  # float32 (n_good, d), unit rows
    indices: np.ndarray  # int64 (n_good,), the input position of each row
    errors: list[ItemError] = field(default_factory=list)


class EncodeError(UnivlFastError, ValueError):
    """Some items could not be encoded. ``errors`` lists each (index + reason);
    ``result`` holds the embeddings of the good ones."""

    def __init__(self, what: str, errors: list[ItemError], result: EncodeResult):
        shown = "; ".join(str(e) for e in errors[:10])
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        super().__init__(f"{what}: {len(errors)} bad item(s): {shown}{more}")
        self.errors = errors
        self.result = result


def _check_text(item: Any) -> str:
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return bytes(item).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    if not isinstance(item, str):
        raise ValueError(f"expected str, got {type(item).__name__}")
    try:
        item.encode("utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: lone surrogate U+{ord(item[exc.start]):04X} at "
            f"position {exc.start}"
        ) from None
    return item


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _combine(image: np.ndarray, caption: np.ndarray) -> np.ndarray:
    from univl_fast import ops

    return ops.combine_image_docs(np.ascontiguousarray(image), np.ascontiguousarray(caption))


class Encoder:
    """Encode queries and documents with an exported engine, without torch.

    engine_dir: the exporter's output. precision: "fp32" | "fp16" | "int8" (default: the
    fastest whose parity passed for this backend: int8 on CPU). backend: see
    ``univl_fast.runtime.backends`` (default: the best available whose artifacts passed
    parity: TensorRT plans only with recorded, passed parity; see
    ``univl_fast.runtime.selection``). batch_size: rows per graph run.
    text_runtime: "auto" | "native" | "onnxruntime": who runs the text tower for int8 on the
    CPU, our compiled native tower (``univl_fast.runtime.native_text``) or the ONNX graph;
    auto picks native where it is fast (AVX2 or AVX-512 VNNI). ``self.text_runtime`` says which
    runs.
    image_runtime: the same choice for the image tower (``univl_fast.runtime.native_image``;
    ``UNIVL_FAST_NATIVE_IMAGE=0`` turns auto off); ``self.image_runtime`` says which runs.
    decode_workers: threads that decode + preprocess the next batch of image documents while
    the image tower runs (0: inline; for machines with cores beside the tower's threads).
    jpeg_draft: decode JPEGs at a reduced DCT scale (faster, pixels not exact: opt-in).
    """

    def __init__(
        self,
        engine_dir: str | os.PathLike,
        precision: str | None = None,
        backend: str | None = None,
        batch_size: int = 64,
        threads: ThreadSettings | None = None,
        text_runtime: str | None = None,
        image_runtime: str | None = None,
        decode_workers: int = 0,
        jpeg_draft: bool = False,
        verify_on_load: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.engine_dir = Path(engine_dir)
        self.manifest: dict[str, Any] = load_manifest(self.engine_dir)
        self.manifest_sha256: str = manifest_sha256(self.engine_dir)
        m = self.manifest
        # the space the vectors live in (None: an engine exported before it was recorded)
        self.embedding_space: dict[str, Any] | None = m.get("embedding_space")
        # why auto passed over a faster precision the engine has (None: it did not)
        self.precision_reason: str | None = None
        # what the caller asked for per tower (workers elsewhere re-resolve the same request)
        self.runtime_requests: dict[str, str] = {
            "text": text_runtime or "auto",
            "image": image_runtime or "auto",
        }
        self.backend: str = self._pick_backend(backend)
        self.precision: str = self._pick_precision(precision)
        self.batch_size = int(batch_size)
        if decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0, got {decode_workers}")
        self.decode_workers = int(decode_workers)
        self.jpeg_draft = bool(jpeg_draft)
        self.dim: int = int(m["embed_dim"])
        self.context_length: int = int(m["context_length"])

        tok = m["tokenizer"]
        vocab = verify_file(self.engine_dir, m, tok["vocab_file"])
        self.tokenizer = ClipTokenizer(vocab, int(tok["context_length"]))
        p = m["preprocess"]
        self.preprocess = ImagePreprocessor(
            PreprocessConfig(
                image_size=p["image_size"],
                mean=tuple(p["mean"]),
                std=tuple(p["std"]),
                interpolation=p.get("interpolation", "bicubic"),
                resize_mode=p.get("resize_mode", "shortest"),
            )
        )
        self._threads = threads
        # tower -> why auto passed over its native tower (only where the engine has one)
        self.runtime_reasons: dict[str, str] = {}
        self.text_runtime: str = self._pick_runtime("text", text_runtime)
        self.image_runtime: str = self._pick_runtime("image", image_runtime)
        # what was asked for by name: the load-time check never falls back from it
        self._explicit = {
            "backend": backend not in (None, "auto"),
            "precision": precision is not None,
            **{t: r.lower() != "auto" for t, r in self.runtime_requests.items()},
        }
        self._towers: dict[str, Any] = {}
        # what the load-time check did (univl_fast.runtime.verify_load): per tower its kernel
        # class here, the classes the export measured on, re-checked or not and why, fallbacks
        self.verification: dict[str, Any] = verify_load.open_verified(self, verify_on_load)

    @property
    def runtimes(self) -> dict[str, str]:
        """Who runs each tower: "native", "onnxruntime" or "tensorrt"."""
        return {"text": self.text_runtime, "image": self.image_runtime}

    def parity_key(self, tower: str) -> str:
        """The manifest's parity key of the artifact that runs ``tower``."""
        runtime = self.runtimes[tower]
        if runtime == "native":
            return selection.NATIVE_KEY
        return selection.PLAN_KEY if runtime == "tensorrt" else self.precision

    def combined_key(self) -> str:
        """The manifest's parity key of the image-document vector the two towers make."""
        text, image = self.parity_key("text"), self.parity_key("image")
        if image == selection.NATIVE_KEY:
            return selection.NATIVE_IMAGE_COMBINED_KEY
        return text

    def fall_back(self, failed: set[tuple[str, str, str]]) -> str:
        """Switch to the next verified runtime or precision after the load-time check refused
        the artifacts in ``failed`` ({(backend, tower, key)}); returns what changed. Order: the
        other int8 runtime of a refused tower (native <-> ONNX graph), then the next precision
        whose export parity passed (``selection.SPEED_ORDER``), then ONNX Runtime on the CPU.
        EngineError when the change would override what was asked for by name, or nothing is
        left."""
        m, before = self.manifest, self.describe_choice()
        if self.backend == "tensorrt" and not self._explicit["backend"]:  # plans -> ORT graphs
            self._repick(resolve_backend("onnxruntime"), None)
            return f"{before} -> {self.describe_choice()}"
        bad = {t for b, t, k in failed if b == self.backend and k == self.parity_key(t)}
        if not bad:  # only the pair's image-document vector failed: both towers go
            bad = {"text", "image"}
        if self.precision == "int8" and self.backend == "onnxruntime-cpu":
            alts = {t: self._other_int8_runtime(t, failed) for t in bad}
            if all(alts.values()):
                for t, alt in alts.items():
                    was = self.runtimes[t]
                    setattr(self, f"{t}_runtime", alt)
                    self.runtime_reasons[t] = (
                        f"the int8 {t} tower on {was} failed the load-time parity check on this "
                        f"host; {alt} runs it (Encoder.verification)"
                    )
                return f"{before} -> {self.describe_choice()}"
        blocked = [k for k in ("text", "image") if k in bad and self._explicit[k]]
        if blocked or self._explicit["precision"]:
            what = "precision" if self._explicit["precision"] else f"{blocked[0]}_runtime"
            raise EngineError(
                f"engine {self.engine_dir}: {before} was asked for by name ({what}) and failed "
                f"the load-time parity check on this host (see the log); ask for another, or "
                f"set UNIVL_FAST_VERIFY_ON_LOAD=never to use it unchecked"
            )
        tried = {(b, k) for b, _, k in failed}
        family = "onnxruntime-cpu" if self.backend == "onnxruntime-cpu" else "gpu"
        for cand in selection.SPEED_ORDER[family]:
            if cand == "fp16" and family == "onnxruntime-cpu":
                continue
            if (self.backend, cand) in tried or cand not in selection.available_precisions(m):
                continue
            if selection.parity_problem(m, cand) is None:
                self._repick(self.backend, cand)
                return f"{before} -> {self.describe_choice()}"
        if self.backend != "onnxruntime-cpu" and not self._explicit["backend"]:
            self._repick("onnxruntime-cpu", None)
            return f"{before} -> {self.describe_choice()}"
        raise EngineError(
            f"engine {self.engine_dir}: no precision or runtime passed the load-time parity "
            f"check on this host (last tried {before}; see the log)"
        )

    def _repick(self, backend: str, precision: str | None) -> None:
        """Choose again on ``backend`` at ``precision`` (None: auto's) with the runtimes asked
        for."""
        self.backend = backend
        self.precision = precision or self._pick_precision(None)
        self.text_runtime = self._pick_runtime("text", self.runtime_requests["text"])
        self.image_runtime = self._pick_runtime("image", self.runtime_requests["image"])

    def _other_int8_runtime(self, tower: str, failed: set[tuple[str, str, str]]) -> str | None:
        """The int8 runtime of ``tower`` to try after its current one was refused here (None:
        none: asked for by name, not in the engine, not verified at export, or refused too)."""
        if self._explicit[tower]:
            return None
        if self.runtimes[tower] == "native":
            if "int8" not in self.manifest["graphs"].get(tower, {}):
                return None  # no int8 graph to go back to
            alt, key = "onnxruntime", "int8"
        else:
            alt, key = "native", selection.NATIVE_KEY
            problem = self._native_problem(tower) or (
                selection.native_text_problem(self.manifest)
                if tower == "text"
                else selection.native_image_problem(self.manifest)
            )
            if problem or not env_flag(_NATIVE_KNOB[tower], default=True):
                return None
        if (self.backend, tower, key) in failed:
            return None
        return alt

    def info(self) -> dict[str, Any]:
        """What runs here and how it was verified on this host (JSON-able)."""
        return {
            "precision": self.precision,
            "backend": self.backend,
            "text_runtime": self.text_runtime,
            "image_runtime": self.image_runtime,
            "runtime_reasons": dict(self.runtime_reasons),
            "precision_reason": self.precision_reason,
            "verification": self.verification,
        }

    def describe_choice(self) -> str:
        """``int8 on onnxruntime-cpu (text native, image onnxruntime)``."""
        return (
            f"{self.precision} on {self.backend} (text {self.text_runtime}, "
            f"image {self.image_runtime})"
        )

    def reopened(self) -> Encoder:
        """A new encoder with this one's choices and load-time check result, on new sessions
        (a forked child needs them; the check is not repeated: same host, same files)."""
        new = copy.copy(self)
        new._towers = {t: new._open(t) for t in ("text", "image")}
        return new

    @property
    def encoding(self) -> dict[str, Any]:
        """How this encoder turns text and images into vectors (an index records the corpus's;
        a corpus work dir is resumed only under the same encoding)."""
        return {
            "precision": self.precision,
            "backend": self.backend,
            "text_runtime": self.text_runtime,
            "image_runtime": self.image_runtime,
            "jpeg_draft": self.jpeg_draft,
        }

    # -- setup ---------------------------------------------------------------------------
    def _pick_backend(self, backend: str | None) -> str:
        """auto: the best backend here, TensorRT only with plans whose parity passed; a
        backend asked for by name runs unverified plans with a warning."""
        m = self.manifest
        plans_problem = selection.plans_problem(m)
        if backend in (None, "auto"):
            if plans_problem is not None and m.get("tensorrt_plans"):
                log.info("TensorRT plans not picked by auto: %s", plans_problem)
            return self._plans_run_here(resolve_backend(None, has_plans=plans_problem is None))
        chosen = resolve_backend(backend, has_plans=bool(m.get("tensorrt_plans")))
        if chosen == "tensorrt":
            selection.warn_unverified("backend 'tensorrt' (the engine's plans)", plans_problem)
        return self._plans_run_here(chosen)

    def _plans_run_here(self, chosen: str) -> str:
        """TensorRT plans are bound to the GPU model and TensorRT version that built them: on
        a mismatch or a plan that does not deserialize, ONNX Runtime instead, with a warning."""
        if chosen != "tensorrt":
            return chosen
        m = self.manifest
        plans = {}
        for tower in ("text", "image"):
            rel = m["tensorrt_plans"][tower]["fp16"]
            plans[verify_file(self.engine_dir, m, rel)] = m["files"][rel]
        why = tensorrt_plans_problem(plans)
        if why is None:
            return chosen
        log.warning("TensorRT plans not used, running on ONNX Runtime instead: %s", why)
        return resolve_backend("onnxruntime")

    def _pick_precision(self, precision: str | None) -> str:
        m = self.manifest
        if self.backend == "tensorrt":
            if precision not in (None, "fp16"):
                raise ValueError(f"backend 'tensorrt' runs the fp16 plans; precision {precision!r}")
            return "fp16"
        available = selection.available_precisions(m)
        if precision is not None:
            if precision not in available:
                raise EngineError(
                    f"engine {self.engine_dir}: no {precision!r} graphs for both towers "
                    f"(has {', '.join(available) or 'none'}); re-export with --precision "
                    f"{precision}"
                )
            problem = selection.parity_problem(m, precision)
            selection.warn_unverified(f"precision {precision!r}", problem)
            return precision
        picked = selection.auto_precision(m, self.backend)
        if picked == "int8" and self.backend == "onnxruntime-cpu":
            why = self._graphless_int8_problem()
            if why is not None:
                log.warning("int8 not picked by auto: %s", why)
                self.precision_reason = why
                picked = selection.auto_precision(m, self.backend, exclude=("int8",))
        if picked is None:
            raise EngineError(
                f"engine {self.engine_dir}: no precision passed parity for both towers and the "
                f"image-document vector on {self.backend} (has {', '.join(available) or 'none'})"
            )
        return picked

    def _graphless_int8_problem(self) -> str | None:
        """Why int8 cannot run here although the engine verified it (None: it can): a tower
        with no int8 graph (the export's ONNX Runtime int8 route missed parity) runs int8 only on
        its native tower, which auto uses only where it is on and fast (AVX2 or better)."""
        from univl_fast.runtime.native_text import fast_native_available

        for tower in ("text", "image"):
            if "int8" in self.manifest["graphs"].get(tower, {}):
                continue
            if self.runtime_requests[tower].lower() == "onnxruntime":
                return f"{tower}_runtime='onnxruntime' asked for, and the engine has no int8 {tower} graph"
            if not env_flag(_NATIVE_KNOB[tower], default=True):
                return f"the {tower} tower has no int8 graph and {_NATIVE_KNOB[tower]}=0"
            fast, why = fast_native_available()
            if not fast:
                return (
                    f"the {tower} tower has no int8 graph and its native tower is slow here: {why}"
                )
        return None

    def _native_problem(self, tower: str) -> str | None:
        """Why the native int8 ``tower`` ("text" | "image") cannot serve this encoder (None:
        it can)."""
        native = self.manifest.get("native", {})
        if "int8" not in native.get(tower, {}):
            reason = native.get(_NATIVE_REASON[tower])
            why = reason or "not exported (re-export with int8 precision)"
            return f"engine {self.engine_dir} has no native {tower} tower: {why}"
        if self.backend != "onnxruntime-cpu":
            return f"the native {tower} tower runs on the CPU; backend is {self.backend!r}"
        if self.precision != "int8":
            return f"the native {tower} tower is int8; precision is {self.precision!r}"
        return None

    def _pick_runtime(self, tower: str, want: str | None) -> str:
        """ "native" (our compiled int8 ``tower``) or "onnxruntime"/"tensorrt" (the backend).

        auto (default): native when the engine has it, its export parity passed (the tower and
        the image-document vector: ``univl_fast.runtime.selection``), the encoder runs int8 on
        the CPU and the native kernels have a fast build here (AVX2 or AVX-512 VNNI:
        ``native_text.fast_native_available``); for the image tower also only when the export
        measured it faster than the int8 image graph (``selection.native_image_speed_problem``).
        ``UNIVL_FAST_NATIVE_TEXT=0`` / ``UNIVL_FAST_NATIVE_IMAGE=0`` turns auto off. Why auto
        passed over a native tower it could run goes to ``self.runtime_reasons[tower]``.
        "native" insists (also on the portable build, or where it measured slower: the
        explicit override); "onnxruntime" never uses it.
        """
        from univl_fast.runtime.native_text import fast_native_available

        key = (want or "auto").lower()
        backend_runtime = "tensorrt" if self.backend == "tensorrt" else "onnxruntime"
        graphless = (
            self.precision == "int8"
            and self.backend == "onnxruntime-cpu"
            and "int8" not in self.manifest["graphs"].get(tower, {})
        )
        if graphless and key in ("auto", "onnxruntime"):
            # no int8 graph for this tower (its ONNX Runtime route missed parity at export):
            # int8 runs on the native tower or not at all
            problem = self._native_problem(tower)
            if key == "onnxruntime" or problem:
                why = self.manifest.get("parity", {}).get(tower, {}).get("int8", {})
                raise EngineError(
                    f"engine {self.engine_dir}: no int8 {tower} graph "
                    f"({why.get('reason') or 'not exported'}); int8 {tower} runs only on the "
                    f"native tower" + (f", which cannot serve: {problem}" if problem else "")
                )
            selection.warn_unverified(
                f"{tower}_runtime 'native' (no int8 {tower} graph)",
                selection.native_text_problem(self.manifest)
                if tower == "text"
                else selection.native_image_problem(self.manifest),
            )
            return "native"
        if key == "onnxruntime":
            return backend_runtime
        if key not in ("auto", "native"):
            raise ValueError(f"{tower}_runtime {want!r}: choose auto, native or onnxruntime")
        problem = self._native_problem(tower)
        if tower == "text":
            unverified = selection.native_text_problem(self.manifest)
        else:
            unverified = selection.native_image_problem(self.manifest)
        if key == "native":
            if problem:
                raise EngineError(f"{tower}_runtime='native': {problem}")
            selection.warn_unverified(f"{tower}_runtime 'native'", unverified)
            return "native"
        if problem or not env_flag(_NATIVE_KNOB[tower], default=True):
            return backend_runtime
        if unverified is not None:
            log.warning(
                "native %s tower not used: %s; using %s", tower, unverified, backend_runtime
            )
            self.runtime_reasons[tower] = unverified
            return backend_runtime
        fast, why = fast_native_available()
        if fast and tower == "image":
            why = selection.native_image_speed_problem(self.manifest)
            fast = why is None
        if not fast:
            log.info("native %s tower not used: %s; using %s", tower, why, backend_runtime)
            self.runtime_reasons[tower] = why
            return backend_runtime
        return "native"

    def with_text_threads(self, threads: ThreadSettings) -> Encoder:
        """A view of this encoder whose text tower is a second session opened with ``threads``
        (tokenizer, manifest and image tower shared). The engine's batch workers use it: on a
        CPU with W workers each runs its own batches on cores/W threads, with no thread-pool
        hand-offs between the two runs (bench/results/e2e.md)."""
        view = copy.copy(self)
        view._threads = threads
        view._towers = dict(self._towers)
        if self.text_runtime == "native":  # same weights, other thread count
            view._towers["text"] = self._towers["text"].with_threads(threads.resolved_intra_op())
        else:
            view._towers["text"] = view._open("text")
        return view

    def _open(self, tower: str):
        m = self.manifest
        if (self.text_runtime if tower == "text" else self.image_runtime) == "native":
            if tower == "text":
                from univl_fast.runtime.native_text import NativeTextTower as Native
            else:
                from univl_fast.runtime.native_image import NativeImageTower as Native

            rel = m["native"][tower]["int8"]
            path = verify_file(self.engine_dir, m, rel)
            threads = (self._threads or ThreadSettings()).resolved_intra_op()
            try:
                return Native(path, threads=threads)
            except ValueError as exc:
                raise EngineError(f"engine {self.engine_dir}: cannot load {rel}: {exc}") from exc
        if self.backend == "tensorrt":
            rel = m["tensorrt_plans"][tower]["fp16"]
            entry = m["files"][rel]
            path = verify_file(self.engine_dir, m, rel)
            return open_tower(
                path, "tensorrt", {"input": entry["input"], "output": entry["output"]}
            )
        rel = m["graphs"][tower][self.precision]
        path = verify_file(self.engine_dir, m, rel)
        try:
            return open_tower(path, self.backend, threads=self._threads)
        except BackendUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - name the file that ORT could not load
            raise EngineError(f"engine {self.engine_dir}: cannot load {rel}: {exc}") from exc

    # -- text ----------------------------------------------------------------------------
    def _validate_texts(self, texts: Sequence[Any]) -> tuple[list[str], list[int], list[ItemError]]:
        good, idx, errors = [], [], []
        for i, t in enumerate(texts):
            try:
                good.append(_check_text(t))
                idx.append(i)
            except ValueError as exc:
                errors.append(ItemError(i, f"text: {exc}"))
        return good, idx, errors

    def _text_raw(self, texts: list[str], bucket: bool) -> np.ndarray:
        """Raw text-tower embeddings float32 (n, d), rows in input order."""
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        rows = [self.tokenizer.token_ids(t) for t in texts]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable") if bucket else np.arange(n)
        tower = self._towers["text"]
        for start in range(0, n, self.batch_size):
            sel = order[start : start + self.batch_size]
            width = int(lengths[sel].max())
            ids = np.zeros((len(sel), width), dtype=np.int64)
            for j, k in enumerate(sel):
                ids[j, : lengths[k]] = rows[k]
            out[sel] = tower.run(ids)
        return out

    def _finish(
        self, what: str, emb: np.ndarray, idx: list[int], errors: list[ItemError], on_error: OnError
    ):
        result = EncodeResult(emb, np.asarray(idx, dtype=np.int64), errors)
        if on_error == "skip":
            return result
        if on_error != "raise":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if errors:
            raise EncodeError(what, errors, result)
        return emb

    def encode_queries(self, texts: Sequence[str], on_error: OnError = "raise"):
        """Queries -> float32 (n, d) unit rows (in order, no length bucketing: a query batch
        is usually small and already similar in length)."""
        good, idx, errors = self._validate_texts(texts)
        emb = _normalize(self._text_raw(good, bucket=len(good) > self.batch_size))
        return self._finish("encode_queries", emb, idx, errors, on_error)

    def encode_text_docs(self, texts: Sequence[str], on_error: OnError = "raise"):
        """Text documents -> float32 (n, d) unit rows (length-bucketed batches)."""
        good, idx, errors = self._validate_texts(texts)
        emb = _normalize(self._text_raw(good, bucket=True))
        return self._finish("encode_text_docs", emb, idx, errors, on_error)

    # -- images ----------------------------------------------------------------------------
    def encode_image_docs(
        self,
        images: Sequence[ImageSource],
        captions: Sequence[str],
        on_error: OnError = "raise",
    ):
        """Image documents (paths, bytes or PIL images + captions) -> float32 (n, d) unit
        rows, Eq. 3: normalize(image_raw + caption_raw). Images are decoded, preprocessed and
        run ``batch_size`` at a time (memory stays bounded for large inputs); with
        ``decode_workers`` the next batch is decoded while the tower runs this one."""
        images, captions = list(images), list(captions)
        if len(images) != len(captions):
            raise ValueError(
                f"encode_image_docs: {len(images)} images but {len(captions)} captions"
            )
        from univl_fast.runtime.image_batches import decoded_batches

        tower = self._towers["image"]
        raw_parts: list[np.ndarray] = []
        good_caps: list[str] = []
        idx: list[int] = []
        errors: list[ItemError] = []
        batches = decoded_batches(
            images,
            captions,
            self.preprocess,
            self.batch_size,
            _check_text,
            workers=self.decode_workers,
            jpeg_draft=self.jpeg_draft,
        )
        for batch in batches:
            errors += [ItemError(i, why) for i, why in batch.errors]
            if batch.indices:
                raw_parts.append(tower.run(batch.pixels))
                good_caps += batch.captions
                idx += batch.indices
        if idx:
            image_raw = np.concatenate(raw_parts)
            emb = _combine(image_raw, self._text_raw(good_caps, bucket=True))
        else:
            emb = np.zeros((0, self.dim), dtype=np.float32)
        return self._finish("encode_image_docs", emb, idx, errors, on_error)

    def __repr__(self) -> str:
        return (
            f"Encoder({str(self.engine_dir)!r}, precision={self.precision!r}, "
            f"backend={self.backend!r}, text_runtime={self.text_runtime!r}, "
            f"image_runtime={self.image_runtime!r}, dim={self.dim})"
        )
