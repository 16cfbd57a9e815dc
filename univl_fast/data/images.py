"""Random access to ``imgs.tsv`` through ``imgs.lineidx.new`` (torch-free).

``imgs.tsv`` holds one ``image_id<TAB>base64 image bytes`` line per image (51 GB for WebQA), so
it is never read whole: ``imgs.lineidx.new`` (``image_id<TAB>byte offset`` per line) is loaded
into memory (ids + an int64 offset array, ~40 MB for WebQA's 390k images) and each image is
read with one ``os.pread`` at its offset. ``pread`` does not move a shared file position, so
one ``ImageStore`` is safe to use from many threads at once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from univl_fast.data.errors import DataFileMissingError, DataFormatError, SkipReport
from univl_fast.imageio import ImageDecodeError, load_rgb
from univl_fast.utils.io import atomic_open

log = logging.getLogger("univl_fast.data")

_FIRST_READ = 1 << 16  # most WebQA lines are below 64 KiB; longer ones are read in growing chunks


def read_lineidx(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Parse ``imgs.lineidx.new``: returns (ids: list[str], offsets: int64 array (n,))."""
    p = Path(path)
    if not p.is_file():
        raise DataFileMissingError(
            p,
            "missing file: the image line index (image_id<TAB>byte offset "
            "into imgs.tsv per line) that gives random access to the images",
        )
    ids: list[str] = []
    offsets: list[int] = []
    seen: set[str] = set()
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                parts = line.split()
            if len(parts) < 2:
                raise DataFormatError(
                    p, f"expected 'image_id<TAB>offset', got {line[:80]!r}", lineno
                )
            image_id, off = parts[0].strip(), parts[1].strip()
            try:
                offset = int(off)
            except ValueError:
                raise DataFormatError(p, f"offset {off[:40]!r} is not an integer", lineno) from None
            if offset < 0:
                raise DataFormatError(p, f"negative offset {offset}", lineno)
            if image_id in seen:
                raise DataFormatError(p, f"duplicate image id {image_id!r}", lineno)
            seen.add(image_id)
            ids.append(image_id)
            offsets.append(offset)
    return ids, np.asarray(offsets, dtype=np.int64)


def write_lineidx(tsv_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Scan ``imgs.tsv`` once (streaming) and write its line index atomically.

    Useful when only ``imgs.tsv`` is at hand. Returns the path written (default: beside the tsv,
    ``imgs.lineidx.new``).
    """
    tsv = Path(tsv_path)
    out = Path(out_path) if out_path is not None else tsv.with_name("imgs.lineidx.new")
    with open(tsv, "rb") as src, atomic_open(out, "wb") as dst:
        offset = 0
        for lineno, line in enumerate(src, 1):
            tab = line.find(b"\t")
            if tab <= 0:
                raise DataFormatError(tsv, "expected 'image_id<TAB>base64', found no id", lineno)
            dst.write(line[:tab] + b"\t" + str(offset).encode() + b"\n")
            offset += len(line)
    return out


class ImageStore:
    """The image corpus of a dataset dir: ``imgs.tsv`` read by offset from ``imgs.lineidx.new``.

    ``len(store)``, ``id in store``, ``store.ids()`` (lineidx order), ``read_bytes(id)`` (the
    decoded image file bytes), ``load(id)`` (RGB PIL image, raises ImageDecodeError) and
    ``iter_images(ids, batch_size)`` (skips and reports undecodable images).
    """

    def __init__(self, tsv_path: str | os.PathLike, lineidx_path: str | os.PathLike):
        self.tsv_path = Path(tsv_path)
        self.lineidx_path = Path(lineidx_path)
        if not self.tsv_path.is_file():
            raise DataFileMissingError(
                self.tsv_path,
                "missing file: the image store (image_id<TAB>base64 image bytes per line)",
            )
        self._ids, self._offsets = read_lineidx(self.lineidx_path)
        self._row = {image_id: i for i, image_id in enumerate(self._ids)}
        self._size = self.tsv_path.stat().st_size
        self._fd: int | None = os.open(self.tsv_path, os.O_RDONLY)

    # -- container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._row

    def ids(self) -> list[str]:
        """Every image id, in line-index order (a copy)."""
        return list(self._ids)

    def offset(self, image_id: str) -> int:
        try:
            return int(self._offsets[self._row[str(image_id)]])
        except KeyError:
            raise KeyError(f"image {image_id!r} is not in {self.lineidx_path}") from None

    # -- reading ------------------------------------------------------------------------
    def _read_line(self, offset: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise ValueError(f"ImageStore for {self.tsv_path} is closed")
        if offset >= self._size:
            raise DataFormatError(
                self.tsv_path,
                f"offset {offset} is past the end of the file "
                f"({self._size} bytes); is {self.lineidx_path.name} stale?",
            )
        chunks: list[bytes] = []
        pos, want = offset, _FIRST_READ
        while True:
            block = os.pread(fd, want, pos)
            if not block:
                break
            nl = block.find(b"\n")
            if nl >= 0:
                chunks.append(block[:nl])
                break
            chunks.append(block)
            pos += len(block)
            want = min(want * 2, 1 << 26)
        return b"".join(chunks).rstrip(b"\r")

    def read_bytes(self, image_id: str) -> bytes:
        """The image file bytes of ``image_id`` (base64-decoded from its imgs.tsv line).

        Raises KeyError (unknown id), DataFormatError (the line at the indexed offset holds a
        different id) or ImageDecodeError (the base64 payload is invalid or empty).
        """
        image_id = str(image_id)
        offset = self.offset(image_id)
        line = self._read_line(offset)
        tab = line.find(b"\t")
        found = (
            line[:tab].decode("utf-8", "replace")
            if tab >= 0
            else line[:40].decode("utf-8", "replace")
        )
        if tab < 0 or found.strip() != image_id:
            raise DataFormatError(
                self.tsv_path,
                f"{self.lineidx_path.name} says image {image_id} is at byte {offset}, but the line "
                f"there starts with id {found[:40]!r}",
            )
        payload = line[tab + 1 :].split(b"\t", 1)[0].strip()  # field 2; extra fields ignored
        if not payload:
            raise ImageDecodeError(image_id, "empty base64 payload in imgs.tsv")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageDecodeError(image_id, f"invalid base64 in imgs.tsv ({exc})") from None

    def load(self, image_id: str) -> Image.Image:
        """Decode image ``image_id`` to an RGB PIL image (raises ImageDecodeError)."""
        return load_rgb(self.read_bytes(image_id), item=f"{image_id}")

    def _try_load(self, image_id: str) -> tuple[str, Image.Image | None, str]:
        try:
            return image_id, self.load(image_id), ""
        except KeyError:
            return image_id, None, f"not in {self.lineidx_path.name}"
        except (DataFormatError, ImageDecodeError) as exc:
            return image_id, None, str(exc)

    def iter_images(
        self,
        ids: Iterable[str] | None = None,
        batch_size: int = 64,
        report: SkipReport | None = None,
        workers: int = 0,
    ) -> Iterator[tuple[list[str], list[Image.Image]]]:
        """Yield ``(ids, images)`` batches of up to ``batch_size`` decoded RGB images, in order.

        Images that cannot be read or decoded are skipped and recorded in ``report`` (id and
        reason); the others are never lost. A warning with the count is logged at the end when
        any were skipped. ``ids`` defaults to every image in the store. ``workers`` > 0 decodes
        with that many threads (Pillow releases the GIL while decoding; pread is thread-safe).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rep = report if report is not None else SkipReport()
        source = (str(i) for i in (self._ids if ids is None else ids))
        pool = ThreadPoolExecutor(workers) if workers > 0 else None
        try:
            while True:
                chunk = list(islice(source, batch_size))
                if not chunk:
                    break
                results = pool.map(self._try_load, chunk) if pool else map(self._try_load, chunk)
                batch_ids: list[str] = []
                batch_imgs: list[Image.Image] = []
                for image_id, img, reason in results:
                    rep.seen += 1
                    if img is None:
                        rep.add(image_id, reason)
                    else:
                        batch_ids.append(image_id)
                        batch_imgs.append(img)
                if batch_ids:
                    yield batch_ids, batch_imgs
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        if rep.skipped:
            log.warning("%s: %s", self.tsv_path, rep.summary())

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        # Picklable for worker processes: reopen the file on the other side.
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.tsv_path, os.O_RDONLY)

    def __repr__(self) -> str:
        return f"ImageStore({str(self.tsv_path)!r}, {len(self)} images)"
