"""Cost of the load-time parity check (``univl_fast.runtime.verify_load``) on ViT-B-32.

Loads the engine with ``verify_on_load="never"`` (today's load: no check) and ``"always"`` (the
check runs on every artifact the encoder uses, as it would on a host of another kernel class),
interleaved, ``--rounds`` times each; reports each side's median load time, the check's own
seconds (``Encoder.verification["seconds"]``) and the ratio. Random weights (same cost as a
trained checkpoint); the engine is exported once and reused (``bench/engine_setup.py``).

    python bench/bench_verify_load.py [--model ViT-B-32] [--rounds 5] [--out bench/results/verify_load.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_setup import exported_engine, random_checkpoint  # noqa: E402


def load_once(engine: Path, mode: str) -> tuple[float, float, dict]:
    from univl_fast.runtime import Encoder

    start = time.perf_counter()
    enc = Encoder(engine, verify_on_load=mode)
    total = time.perf_counter() - start
    return total, float(enc.verification["seconds"]), enc.info()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/univl_fast_bench"))
    ap.add_argument("--out", default=None, help="append the Markdown table to this file")
    ap.add_argument("--engine", default=None, help="an exported engine dir to load (no set-up)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.engine:
        engine = Path(args.engine)
    else:
        ckpt = random_checkpoint(args.model, work / f"{args.model}-random")
        engine = exported_engine(ckpt, work / f"{args.model}-engine")
    times: dict[str, list[float]] = {"never": [], "always": []}
    checks: list[float] = []
    info = {}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    for i in range(args.rounds):
        for mode in ("never", "always") if i % 2 == 0 else ("always", "never"):
            total, check, info_ = load_once(engine, mode)
            times[mode].append(total)
            if mode == "always":
                checks.append(check)
                info = info_
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    never, always = statistics.median(times["never"]), statistics.median(times["always"])
    towers = info["verification"]["towers"]
    lines = [
        f"### load-time check, {args.model} random weights ({time.strftime('%Y-%m-%d')})",
        "",
        f"CPU: {platform.processor() or platform.machine()} "
        f"({info['verification']['towers']['text']['host_class'].get('cpu')}), "
        f"{os.cpu_count()} CPUs; load average before {' '.join(load_before)}, after "
        f"{' '.join(load_after)}; {args.rounds} rounds, interleaved.",
        f"Encoder: {info['precision']} on {info['backend']} (text {towers['text']['runtime']} "
        f"{towers['text']['key']}, image {towers['image']['runtime']} {towers['image']['key']}).",
        "",
        "| load | median s | all runs (s) |",
        "|---|---|---|",
        f"| no check (`never`, the baseline) | {never:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in times['never'])} |",
        f"| check every artifact (`always`) | {always:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in times['always'])} |",
        f"| the check itself | {statistics.median(checks):.2f} | "
        f"{', '.join(f'{t:.2f}' for t in checks)} |",
        "",
        f"Ratio always / never: {always / never:.2f}x. Reproduce: "
        f"`python bench/bench_verify_load.py --model {args.model} --rounds {args.rounds}`.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
