"""Library code logs (or draws tqdm bars), never prints; the CLI shows the package's logs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Command-line entry points: printing results and progress to the user is their job.
CLI_MODULES = {
    "cli/__init__.py",
    "cli/engine_args.py",
    "demo.py",
    "cli/evaluate.py",
    "info.py",
    "cli/search.py",
    "serve/cli.py",
    "data/bm25.py",
    "data/synth_cli.py",
    "data/validate.py",
    "export/cli.py",
    "cli/index.py",
    "train/cli.py",
}
CLI_FUNCTIONS = {"main", "run", "run_checkpoint_eval"}  # entry points inside library modules


def _prints_outside_entry_points(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef) else func
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id == "print"
                and name not in CLI_FUNCTIONS
            ):
                found.append(f"{path.relative_to(ROOT)}:{child.lineno} (in {name})")
            visit(child, name)

    visit(tree, None)
    return found


def test_library_modules_do_not_print():
    pkg = ROOT / "univl_fast"
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        if path.relative_to(pkg).as_posix() not in CLI_MODULES:
            offenders += _prints_outside_entry_points(path)
    assert offenders == [], "print() in library code (use logging or tqdm): " + ", ".join(offenders)


def test_cli_logging_shows_package_progress_and_warnings_only():
    code = (
        "import logging; from univl_fast.utils.logs import configure_cli_logging; "
        "configure_cli_logging(); "
        "logging.getLogger('univl_fast.index.build').info('training IVF on 10 vectors'); "
        "logging.getLogger('univl_fast.train.batches').warning('skipping image x'); "
        "logging.getLogger('faiss.loader').info('loading faiss with AVX512')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert proc.stderr.splitlines() == ["training IVF on 10 vectors", "warning: skipping image x"]
    assert proc.stdout == ""
