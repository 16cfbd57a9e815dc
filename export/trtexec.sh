#!/usr/bin/env bash
# Build fp16 TensorRT plans for an exported engine with NVIDIA's trtexec (see README.md), from
# the engine's standard-op fp32 graphs (manifest "tensorrt_graphs": default-domain ONNX ops only;
# the served fp32 graphs hold ONNX Runtime fusions TensorRT's parser does not implement).
# The plans are written beside the graphs but NOT listed in manifest.json and carry no
# recorded parity: use export/build_trt_plans.py for plans the engine verifies and serves.
# usage: export/trtexec.sh ENGINE [MAX_BATCH=64] [OPT_BATCH=16]
#        DRY_RUN=1 export/trtexec.sh ENGINE   prints the trtexec commands instead of running them
set -euo pipefail
ENGINE=${1:?usage: trtexec.sh ENGINE [MAX_BATCH] [OPT_BATCH]}
MAX=${2:-64}
OPT=${3:-16}
RUN=()
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  RUN=(echo)
else
  command -v trtexec >/dev/null || { echo "trtexec not found (TensorRT's bin/ must be on PATH)" >&2; exit 3; }
fi
field() {
  python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
keys = sys.argv[2].split(".")
v = m
for k in keys:
    if k not in v:
        sys.exit(f"{sys.argv[1]}: no {sys.argv[2]} (re-export the engine with this univl_fast)")
    v = v[k]
print(v)' "$ENGINE/manifest.json" "$1"
}
S=$(field preprocess.image_size)
CTX=$(field context_length)
TEXT=$(field tensorrt_graphs.text)
IMAGE=$(field tensorrt_graphs.image)
"${RUN[@]}" trtexec --onnx="$ENGINE/$TEXT" --fp16 --saveEngine="$ENGINE/text_fp16.trtexec.plan" \
  --minShapes=input_ids:1x1 --optShapes=input_ids:${OPT}x24 --maxShapes=input_ids:${MAX}x${CTX}
"${RUN[@]}" trtexec --onnx="$ENGINE/$IMAGE" --fp16 --saveEngine="$ENGINE/image_fp16.trtexec.plan" \
  --minShapes=pixel_values:1x3x${S}x${S} --optShapes=pixel_values:${OPT}x3x${S}x${S} \
  --maxShapes=pixel_values:${MAX}x3x${S}x${S}
[[ "${DRY_RUN:-0}" == 1 ]] || echo "plans written beside the graphs (not listed in manifest.json; see README.md)"
