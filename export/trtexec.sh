#!/usr/bin/env bash
# Build fp16 TensorRT plans for an exported engine with NVIDIA's trtexec (see README.md).
# usage: export/trtexec.sh ENGINE [MAX_BATCH=64] [OPT_BATCH=16]
set -euo pipefail
ENGINE=${1:?usage: trtexec.sh ENGINE [MAX_BATCH] [OPT_BATCH]}
MAX=${2:-64}
OPT=${3:-16}
command -v trtexec >/dev/null || { echo "trtexec not found (TensorRT's bin/ must be on PATH)" >&2; exit 3; }
S=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['preprocess']['image_size'])" "$ENGINE/manifest.json")
CTX=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['context_length'])" "$ENGINE/manifest.json")
trtexec --onnx="$ENGINE/text_fp32.onnx" --fp16 --saveEngine="$ENGINE/text_fp16.trtexec.plan" \
  --minShapes=input_ids:1x1 --optShapes=input_ids:${OPT}x24 --maxShapes=input_ids:${MAX}x${CTX}
trtexec --onnx="$ENGINE/image_fp32.onnx" --fp16 --saveEngine="$ENGINE/image_fp16.trtexec.plan" \
  --minShapes=pixel_values:1x3x${S}x${S} --optShapes=pixel_values:${OPT}x3x${S}x${S} \
  --maxShapes=pixel_values:${MAX}x3x${S}x${S}
echo "plans written beside the graphs (not listed in manifest.json; see README.md)"
