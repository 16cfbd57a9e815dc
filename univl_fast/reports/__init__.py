"""Figures and reports of a run: ``page`` (``univl-fast report``: one self-contained HTML page
of a workdir, torch-free) and ``embedding_plot`` (the paper's Figure 4, t-SNE; ``univl-fast
plot``, the ``[report]`` extra)."""
