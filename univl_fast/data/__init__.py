"""The dataset layer (torch-free): the UniVL-DR / WebQA layout, image store, synthetic benchmark.

``DatasetDir(path)`` reads queries, corpus, qrels and images; ``ImageStore`` gives random
access to ``imgs.tsv``; ``univl_fast.data.synth.generate`` writes the built-in benchmark.
"""

from __future__ import annotations

from univl_fast.data.errors import (
    DataFileMissingError,
    DataFormatError,
    SkipReport,
    ValidationReport,
)
from univl_fast.data.images import ImageStore, read_lineidx, write_lineidx
from univl_fast.data.layout import (
    SPLITS,
    DatasetDir,
    ImageDoc,
    Query,
    TextDoc,
    iter_jsonl,
    read_qrels,
)

__all__ = [
    "SPLITS",
    "DataFileMissingError",
    "DataFormatError",
    "DatasetDir",
    "ImageDoc",
    "ImageStore",
    "Query",
    "SkipReport",
    "TextDoc",
    "ValidationReport",
    "iter_jsonl",
    "read_lineidx",
    "read_qrels",
    "write_lineidx",
]
