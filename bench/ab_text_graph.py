"""Interleaved A/B of ONNX text graphs on one query (raw ONNX Runtime sessions, no Encoder).

Used to choose the text-graph rewrites of the exporter (bench/results/encode.md)::

    .venv/bin/python bench/ab_text_graph.py OLD/text_int8.onnx NEW/text_int8.onnx \
        --tokens 19 --rounds 20

``--batch N`` runs N queries of that length per call instead of one. Each graph gets its own
session (2 intra-op threads, spinning within a run, stopped at its
end, unless ``--no-spin``); rounds alternate between the sessions (10 warm-up runs, then 50
timed runs per round), so drift in the machine's speed hits every graph alike. Prints p50 / p10
per graph and the cosine of each graph's output to the first one's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--tokens", type=int, default=19, help="query length incl. SOT/EOT")
    ap.add_argument("--batch", type=int, default=1, help="queries per run (same length)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-spin", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort

    ids = np.random.RandomState(0).randint(1, 49000, size=(args.batch, args.tokens))
    ids = ids.astype(np.int64)
    ids[:, 0], ids[:, -1] = 49406, 49407
    sessions = []
    for path in args.graphs:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if args.no_spin else "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
    feeds = [{s.get_inputs()[0].name: ids} for s in sessions]
    outs = [s.run(None, f)[0][0] for s, f in zip(sessions, feeds, strict=True)]
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(10):
                s.run(None, f)
            for _ in range(50):
                t = time.perf_counter()
                s.run(None, f)
                times[i].append(time.perf_counter() - t)
    for path, out, ts in zip(args.graphs, outs, times, strict=True):
        cos = float(out @ outs[0] / np.linalg.norm(out) / np.linalg.norm(outs[0]))
        print(
            f"{path}: p50 {np.median(ts) * 1e3:.3f} ms  p10 {np.percentile(ts, 10) * 1e3:.3f} ms"
            f"  cos to first {cos:.6f}"
        )


if __name__ == "__main__":
    main()
