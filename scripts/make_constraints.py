"""Write a pip constraints file from the environment the tests passed in.

    .venv/bin/python scripts/make_constraints.py [--extras dev] [--out constraints/cpu.txt]
    python scripts/make_constraints.py --from-report REPORT.json --out constraints/gpu.txt \
        --extras dev-gpu --pin tensorrt-cu13==10.16.1.11 ...

Takes the project's requirements (its dependencies plus the named extras of pyproject.toml,
following ``univl-fast[...]`` self-references), walks their requirements through the installed
distributions' metadata (markers evaluated for this interpreter) and pins every distribution
reached at its installed version: ``pip freeze`` filtered to what the project needs. The
project itself is left out (it is installed editable). scripts/setup.sh installs with the file
(``pip install -c constraints/cpu.txt``), so a fresh install gets the versions that were tested.

``--from-report``: pins from a resolve instead (``pip install --dry-run --report``: what pip
would install), for an environment that cannot be built here (the GPU set); such a file says
it is a resolve, not a tested install. ``--pin`` adds pins the resolve could not reach.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import platform
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SELF = "univl-fast"


def project_requirements(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"--extras: pyproject.toml has no extra {extra!r}")
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == SELF:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def closure(roots: list[Requirement]) -> dict[str, str]:
    """{canonical name: installed version} of everything ``roots`` need here."""
    env = {"python_version": ".".join(platform.python_version_tuple()[:2])}
    pinned: dict[str, str] = {}
    todo = [(r, frozenset(r.extras)) for r in roots]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{req.name} is required but not installed here") from None
        pinned[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = [{**env, "extra": e} for e in extras] or [{**env, "extra": ""}]
            if sub.marker is not None and not any(sub.marker.evaluate(w) for w in wanted):
                continue
            todo.append((sub, frozenset(sub.extras)))
    return pinned


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", default="dev", help="comma-separated extras (default: dev)")
    ap.add_argument("--out", default=str(ROOT / "constraints" / "cpu.txt"))
    ap.add_argument("--from-report", help="pins from a pip --dry-run --report JSON file")
    ap.add_argument("--pin", action="append", default=[], help="NAME==VERSION to add")
    ap.add_argument("--note", action="append", default=[], help="a comment line to add")
    args = ap.parse_args()
    extras = [e for e in args.extras.split(",") if e]
    made = f"# Python {platform.python_version()}, {sys.platform}, {dt.date.today().isoformat()}."
    if args.from_report:
        report = json.loads(Path(args.from_report).read_text())
        pins = {
            canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
            for i in report["install"]
        }
        lines = [
            f"# Constraints for pip install -c: a RESOLVE of {SELF}[{','.join(extras)}], not a",
            "# tested install (never run on a GPU). Made by: python scripts/make_constraints.py",
            f"#   --from-report REPORT --extras {','.join(extras)} "
            + " ".join(f"--pin {p}" for p in args.pin),
            "# from `pip install --dry-run --ignore-installed --report REPORT` of the extra's",
            "# requirements with -c constraints/cpu.txt (the shared packages stay as tested).",
        ]
    else:
        pins = closure(project_requirements(extras))
        lines = [
            f"# Constraints for pip install -c: the versions {SELF}[{','.join(extras)}] was "
            "tested with.",
            f"# Made by: python scripts/make_constraints.py --extras {','.join(extras)}",
            "# in the venv the test suite passed in (pip freeze filtered to the distributions the",
            "# project's requirements reach).",
        ]
    for pin in args.pin:
        name, version = pin.split("==")
        pins[canonicalize_name(name)] = version
    pins.pop(SELF, None)
    lines += [made, *(f"# {n}" for n in args.note)]
    lines += [
        f"{name}=={pins[name]}" for name in sorted(pins, key=lambda n: re.sub("[-_.]", "", n))
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
