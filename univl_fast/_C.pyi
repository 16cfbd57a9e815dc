"""Type stubs of univl_fast._C, the compiled core (csrc/bindings.cpp, csrc/text_tower_bindings.cpp).

tests/test_errors.py checks that every public name of the built module has a stub here.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# ------------------------------------------------------------------ combine (UniVL-DR Eq. 3)

def combine_image_docs(
    a: npt.ArrayLike, b: npt.ArrayLike, *, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """out[i] = (a[i] + b[i]) / ||a[i] + b[i]||_2 on the CPU (float32/float16 in, float32 out)."""

def combine_image_docs_cuda(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    out: npt.NDArray[np.float32] | None = None,
    device: int = -1,
) -> npt.NDArray[np.float32]:
    """Same on CUDA device ``device`` (-1: the current one); RuntimeError on a build or machine
    without CUDA."""

def set_simd_variant(name: str) -> str:
    """Forces the CPU combine kernel ('scalar', 'avx2', 'avx512'); returns the previous one."""

# ------------------------------------------------------------------ CUDA and build info

def cuda_device_count() -> int: ...
def cuda_driver_version() -> int: ...
def build_info() -> dict[str, Any]:
    """compiler, cxx_standard, build_type, pybind11, cmake, python, arch, simd_compiled,
    simd_supported, simd_selected, text_tower_isas, openmp (always False: no OpenMP runtime),
    openmp_version (None), threads, cuda, nvcc_version, cuda_architectures, cuda_runtime,
    cuda_runtime_version."""

# ------------------------------------------------------------------ native text tower

def tower_profile_enable(on: bool) -> None:
    """Start (clearing earlier totals) or stop timing the native towers' stages."""

def tower_profile_read() -> tuple[int, dict[str, tuple[float, float, float]]]:
    """(calls, {stage: (work_s, wait_s, macs)}) since tower_profile_enable(True)."""

def text_tower_isas() -> list[str]:
    """ISA builds of the native towers' kernels this CPU runs, best last ('generic', 'avx2',
    'avx512_vnni')."""

def _native_activation(
    act: str, x: npt.NDArray[np.float32], isa: str = "generic"
) -> npt.NDArray[np.float32]:
    """Test hook: the tower's activation ('gelu' | 'quick_gelu') of one ISA build on x."""

def _native_linear(
    x: npt.NDArray[np.float32],
    q: npt.NDArray[np.int8],
    scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    isa: str = "generic",
    out: npt.NDArray[np.float32] | None = None,
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int32]
]:
    """Test hook: per-row activation quantization + int8 linear layer of one ISA build:
    (y, quantized x, row scales, row zero points). out: added to (residual mode); else y
    starts as NaN, so an unwritten output shows."""

def _native_layer_norm(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    eps: float,
    isa: str = "generic",
) -> npt.NDArray[np.float32]:
    """Test hook: the towers' LayerNorm of one ISA build, per row (output starts as NaN)."""

def _native_attention(
    qkv: npt.NDArray[np.float32],
    heads: int,
    lens: list[int],
    causal: bool,
    pooled_only: bool,
    isa: str = "generic",
) -> npt.NDArray[np.float32]:
    """Test hook: multi-head attention of one ISA build over packed rows (qkv (rows, 3d),
    lens summing to rows) -> (rows, d), or (len(lens), d) with pooled_only."""

def _native_embed(
    tok: npt.NDArray[np.uint16],
    pos: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    isa: str = "generic",
) -> npt.NDArray[np.float32]:
    """Test hook: embedding rows float(tok[id]) + pos[t] (tok: float16 bits) of one ISA build."""

def _native_gemm_seconds(rows: int, k: int, n: int, isa: str, reps: int = 200) -> float:
    """Benchmark hook: best seconds of one int8 GEMM (rows x k x n) of one ISA build, one
    thread."""

class TextTower:
    def __init__(
        self,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        vocab: int,
        width: int,
        heads: int,
        layers: int,
        hidden: int,
        context: int,
        embed_dim: int,
        act: str,
        pool: str,
        eos_id: int,
        ln_eps: float,
        threads: int = 1,
        isa: str = "auto",
    ) -> None: ...
    def run(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """int64 ids (batch, seq) -> float32 (batch, embed_dim) raw embeddings."""
    def with_threads(self, threads: int) -> TextTower: ...
    @property
    def isa(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def in_flight(self) -> int:
        """Calls running now on this tower and those sharing its weights."""
    @property
    def weight_bytes(self) -> int: ...
    @property
    def embedding_bytes(self) -> int:
        """Bytes of the resident token embedding (float16)."""

class ImageTower:
    def __init__(
        self,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        width: int,
        heads: int,
        layers: int,
        hidden: int,
        embed_dim: int,
        patch: int,
        image_size: int,
        act: str,
        ln_eps: float,
        threads: int = 1,
        isa: str = "auto",
    ) -> None: ...
    def run(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """float32 pixels (n, 3, S, S) -> float32 (n, embed_dim) raw embeddings."""
    def with_threads(self, threads: int) -> ImageTower: ...
    @property
    def isa(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def in_flight(self) -> int:
        """Calls running now on this tower and those sharing its weights."""
    @property
    def weight_bytes(self) -> int: ...

# ------------------------------------------------------------------ query batcher

class QueryBatcher:
    """Coalesces concurrent submit() calls into batched fn(items) calls on worker threads.

    Raises univl_fast.errors.Overloaded (queue full) and DeadlineExceeded (timeout) from
    submit; survives fork() (the child's first submit restarts the workers)."""

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch: int = 64,
        max_wait_us: int = 2000,
        num_workers: int = 1,
        max_queue: int | None = None,
    ) -> None: ...
    def submit(self, items: Sequence[Any], timeout: float | None = None) -> list[Any]: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]:
        """See univl_fast.search.batching.STATS_DOC."""
    @property
    def closed(self) -> bool: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def max_wait_us(self) -> int: ...
    @property
    def num_workers(self) -> int: ...
    @property
    def max_queue(self) -> int: ...
    def __enter__(self) -> QueryBatcher: ...
    def __exit__(self, *args: object) -> None: ...
