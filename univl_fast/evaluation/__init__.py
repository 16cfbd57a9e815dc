"""The paper's evaluation (torch-free): ``metrics`` (pytrec_eval runs -> the eval JSON keys),
``embeddings`` (exact top-k over embeddings, the Text / Image / Multi settings, tables),
``engine`` (the same through an exported engine and its index: ``univl-fast eval --engine``)
and ``significance`` (mean ± sd, paired sign-flip randomization tests)."""
