#!/usr/bin/env bash
# Corpus-encoding wall time of `univl-fast index` (issue 14), before / after the native image
# tower: the same ViT-B-32 engine (random weights, bench/bench_encode.py's cached one) and the
# same synthetic corpus, once with the ONNX Runtime int8 image graph (`--image-runtime
# onnxruntime`: what indexing ran before) and once with the native int8 image tower
# (`--image-runtime native`); the engine's own `auto` pick (from the speed its export measured)
# is printed first. Both runs use the native int8 text tower.
#
#   bash bench/index_encode_time.sh [SCALE]     # SCALE: small (default, ~3 min) | medium | paper
#
# Scales (corpus images + text documents): tiny 150 + 250 (a smoke test); small 1,500 + 3,000
# (~3 min on an idle box, +3 min when the engine is exported first); medium 15,000 + 30,000
# (~12-15 min for both runs at ~50 images/s); paper 389,750 + 787,697 (hours). Both modalities
# grow ~260x from small to paper, so paper time ~= 260 x the small figure (same engine).
# Run on an idle machine; the figures are the "corpus encoding" lines.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-small}"
PY=.venv/bin/python
WORK=runs/bench/index_encode
DATA="$WORK/data_$SCALE"
mkdir -p "$WORK"
if [ ! -f "$DATA/synth_config.json" ]; then
  $PY -m univl_fast.cli synth --out "$DATA" --scale "$SCALE" --seed 0 >/dev/null 2>&1
fi
ENGINE=$($PY -c "import sys; sys.path.insert(0, 'bench'); from bench_encode import ensure_engine; print(ensure_engine('ViT-B-32')[1])" | tail -n 1)
echo "scale $SCALE, engine $ENGINE, load $(cut -d' ' -f1-3 /proc/loadavg)"
$PY -c "from univl_fast.runtime import Encoder; e = Encoder('$ENGINE'); print('auto picks: text', e.text_runtime, '/ image', e.image_runtime, e.runtime_reasons or '')"
for run in before after; do
  rm -rf "$WORK/index_$run"
  if [ "$run" = before ]; then runtime=onnxruntime; else runtime=native; fi
  log="$WORK/index_$run.log"
  if ! /usr/bin/time -f "index wall %e s, peak RSS %M KB" -a -o "$log" \
    $PY -m univl_fast.cli index --engine "$ENGINE" --data "$DATA" --out "$WORK/index_$run" \
    --image-runtime "$runtime" --quiet >"$log" 2>&1; then
    echo "$run: univl-fast index failed:" && tail -n 20 "$log" && exit 1
  fi
  grep -E "corpus encoding|documents encoded|index wall" "$log" | sed "s/^/$run: /"
done
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
