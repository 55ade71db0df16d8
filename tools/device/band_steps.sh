#!/usr/bin/env bash
# Each mode's band step alone at one image size (the compute-only bound of each mode; one GPU
# suffices), sized to fit one call on the lent GPU machine:
#
#   bash tools/device/band_steps.sh SIZE OUT [RANKS]      (RANKS: default 2)
#
# Sources tools/device/env.sh, then runs tools/bench_band_step.py --profile once per mode
# (plain-graph, plain-compile, single, naive, pcpp, distrifusion; BAND_MODES="..." picks
# others; BAND_ARCH the model, default sdxl, e.g. pixart-sigma; extra bench_band_step.py
# options in BAND_OPTIONS, e.g. "--set runtime.compile=false" for the uncompiled path), each in
# a process of its own (modes measured in one process disturbed each other once:
# docs/benchmarks/results/15-*), and joins the reports with the bounds (bench_band_step.py
# --merge) into OUT/band-SIZE. Logs go to OUT/band-SIZE*.log; a failing command does not stop
# the later ones, and the exit status is that of the last failure (0 if none). Everything is
# packed into OUT/band-SIZE.tgz (the device tool brings back at most 8 files); the archive is
# rewritten after every mode, so a call cut off by its time limit still brings back the modes
# that finished (join them later with bench_band_step.py --merge).
set -u
# shellcheck source=tools/device/common.sh
source tools/device/common.sh
usage_check band_steps.sh "$@"
size=$1 out=$2 ranks=${3:-2}
if [ -e "$out/band-$size.tgz" ] || [ -e "$out/band-$size" ]; then
    echo "band_steps.sh: $out already holds band steps for $size px; choose another OUT" >&2
    exit 2
fi
mkdir -p "$out"
# shellcheck source=tools/device/env.sh
source tools/device/env.sh
status=0
commands_log="$out/band-$size-commands.log"
read -r -a mpirun_gpu <<<"$MPIRUN_GPU_STR"
# pack: (re)write OUT/band-SIZE.tgz from what exists so far (through a temporary file, so a call
# cut off by its time limit still brings back every mode that finished)
pack() {
    local parts=() path
    for path in "$out"/band-"$size"*.log "$out/band-$size"; do
        [ -e "$path" ] && parts+=("${path#"$out"/}")
    done
    tar czf "$out/.band-$size.tgz.part" -C "$out" "${parts[@]}" &&
        mv "$out/.band-$size.tgz.part" "$out/band-$size.tgz"
}
for mode in ${BAND_MODES:-plain-graph plain-compile single naive pcpp distrifusion}; do
    step "band-$size-$mode" "${mpirun_gpu[@]}" -np "$ranks" python3 tools/bench_band_step.py \
        --arch "${BAND_ARCH:-sdxl}" --size "$size" --modes "$mode" --profile --out "$out/band-$size/$mode" \
        ${BAND_OPTIONS:-}
    pack
done
step "band-$size" python3 tools/bench_band_step.py --merge "$out/band-$size"/*/band_steps.json \
    --out "$out/band-$size"
pack && (cd "$out" && rm -rf band-"$size"*.log "band-$size")
exit $status
