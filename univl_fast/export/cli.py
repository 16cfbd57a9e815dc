"""Command line of the exporter: ``python -m univl_fast.export`` / ``univl-fast export``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from univl_fast.export.config import PRECISIONS, ExportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="our checkpoint dir, or a raw CLIP weight file (then --model)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="open_clip model name for a raw weight file (e.g. ViT-B-32-quickgelu)",
    )
    parser.add_argument("--out", required=True, help="engine dir to write")
    parser.add_argument(
        "--precision",
        default="fp32,int8",
        help=f"comma list of {','.join(PRECISIONS)} (fp32 always included)",
    )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build TensorRT fp16 plans (needs tensorrt and a CUDA GPU)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="dataset dir whose texts/images verify parity (default: built-in)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument(
        "--no-fuse", action="store_true", help="skip ONNX Runtime's transformer fusions"
    )
    parser.add_argument(
        "--no-native-text",
        action="store_true",
        help="do not write the native int8 text tower (written with int8 by default)",
    )
    parser.add_argument(
        "--no-tensorrt-graph",
        action="store_true",
        help="do not write {text,image}_fp32.trt.onnx, the standard-op graphs TensorRT plans "
        "are built from (later, on a GPU host); kept with --tensorrt",
    )
    parser.add_argument(
        "--no-native-image",
        action="store_true",
        help="do not write the native int8 image tower (written with int8 by default)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = ExportConfig(
        precisions=[p.strip() for p in args.precision.split(",") if p.strip()],
        opset=args.opset,
        tensorrt=args.tensorrt,
        fuse=not args.no_fuse,
        native_text=not args.no_native_text,
        tensorrt_graph=not args.no_tensorrt_graph,
        native_image=not args.no_native_image,
        data=args.data,
    )
    try:
        config.validate()
    except ValueError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    if config.tensorrt:
        from univl_fast.export.tensorrt import TensorRTUnavailable, require_tensorrt

        try:
            require_tensorrt()
        except TensorRTUnavailable as exc:
            print(f"export: {exc}", file=sys.stderr)
            return 3

    from univl_fast.export.build import ExportError, ModelSpec, export_engine, summarize
    from univl_fast.export.samples import builtin_sample, dataset_sample
    from univl_fast.model import CheckpointError, UniVLDR

    try:
        model = UniVLDR.from_pretrained(args.checkpoint, model_name=args.model)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    source = {"checkpoint": str(Path(args.checkpoint).resolve()), "model": args.model}
    spec = ModelSpec.from_model_config(model.config.to_json(), source)
    try:
        sample = dataset_sample(args.data) if args.data else builtin_sample()
    except (OSError, ValueError) as exc:
        print(f"export: --data {args.data}: {exc}", file=sys.stderr)
        return 2
    try:
        manifest = export_engine(
            model.clip, spec, args.out, config, sample, progress=not args.quiet
        )
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    print(summarize(manifest))
    print(f"engine written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m univl_fast.export", description="export the towers to ONNX / TensorRT"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted (no manifest written; re-run to export)", file=sys.stderr)
        return 130
