"""The ``univl-fast`` console script, and the commands that join stages (``index``: encoding
+ index build, Ray; ``search`` / ``eval``: engine + index; ``plot``), which share
``engine_args``. Commands of one stage live in that stage's package (``train.cli``,
``export.cli``, ``serve.cli``, ...).

Each sub-command lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``univl-fast
search`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from univl_fast.utils.logs import configure_cli_logging

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("univl_fast.data.synth_cli", "write the built-in synthetic benchmark"),
    "train": ("univl_fast.train.cli", "train one stage (inbatch | hardneg)"),
    "mine": ("univl_fast.train.mine", "mine modality-balanced hard negatives with a checkpoint"),
    "export": (
        "univl_fast.export.cli",
        "export the towers to ONNX / TensorRT (= python -m univl_fast.export)",
    ),
    "index": ("univl_fast.cli.index", "encode a corpus with an engine and build a tuned index"),
    "search": ("univl_fast.cli.search", "search an index with an engine"),
    "eval": (
        "univl_fast.cli.evaluate",
        "the paper's metrics, with a checkpoint or an engine+index",
    ),
    "serve": (
        "univl_fast.serve.cli",
        "HTTP service: search, embeddings, search page, metrics",
    ),
    "plot": ("univl_fast.cli.plot", "figures: plot embeddings (the paper's Figure 4, t-SNE)"),
    "report": ("univl_fast.reports.page", "one self-contained HTML page of a workdir's results"),
    "demo": ("univl_fast.demo", "the whole flow on the built-in benchmark"),
    "info": ("univl_fast.info", "what was built and what is available here"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="univl-fast",
        description="Universal multi-modal dense retrieval (UniVL-DR): train, export, index, search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"univl-fast: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    configure_cli_logging()
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"univl-fast {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
