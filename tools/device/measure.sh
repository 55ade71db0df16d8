#!/usr/bin/env bash
# One whole GPU measurement at one image size, sized to fit one call on the lent GPU machine:
#
#   bash tools/device/measure.sh SIZE OUT [RANKS]      (SIZE: 1024 or 2048; RANKS: default 2)
#
# Sources tools/device/env.sh, then runs with RANKS ranks (one per GPU):
#   - at 1024 only, tools/gpu_check.py (every mode against single, bytes against plan) -> OUT/check
#   - tools/bench.py: plain graph loop, single, pcpp, distrifusion, naive, cfg; 50 steps, median
#     of 3, with --profile for pcpp, distrifusion and naive -> OUT/bench-SIZE (traces tarred)
# Each mode's band step alone (the compute-only bound; one GPU suffices) is a separate call:
# tools/device/band_steps.sh.
# Every command's output goes to OUT/*.log; a failing command does not stop the later ones, and
# the exit status is that of the last failure (0 if none). The device tool brings back at most
# 8 files from its $OUT, so everything ends up in two archives: OUT/measure-SIZE.tgz (logs,
# tables, JSON, HDF5) and OUT/traces-SIZE.tgz (the timed runs' rank files).
set -u
# shellcheck source=tools/device/common.sh
source tools/device/common.sh
usage_check measure.sh "$@"
size=$1 out=$2 ranks=${3:-2}
if [ -e "$out/measure-$size.tgz" ] || [ -e "$out/bench-$size" ]; then
    echo "measure.sh: $out already holds results for $size px; choose another OUT" >&2
    exit 2
fi
mkdir -p "$out"
# shellcheck source=tools/device/env.sh
source tools/device/env.sh
status=0
commands_log="$out/commands.log"
read -r -a mpirun_gpu <<<"$MPIRUN_GPU_STR"
if [ "$size" = 1024 ]; then
    step check "${mpirun_gpu[@]}" -np "$ranks" python3 tools/gpu_check.py --arch sdxl --size 1024 \
        --steps 6 --out "$out/check"
fi
step "bench-$size" "${mpirun_gpu[@]}" -np "$ranks" python3 tools/bench.py --arch sdxl \
    --sizes "$size" --steps 50 --reps 3 --cases plain-graph single pcpp distrifusion naive cfg \
    --profile pcpp distrifusion naive --out "$out/bench-$size"
if [ -d "$out/bench-$size/runs" ]; then
    tar czf "$out/traces-$size.tgz" -C "$out/bench-$size" runs && rm -rf "$out/bench-$size/runs"
fi
rm -rf "$out/bench-$size/profile-runs"
parts=()
for part in commands.log check.log check "bench-$size.log" "bench-$size"; do
    [ -e "$out/$part" ] && parts+=("$part")
done
tar czf "$out/measure-$size.tgz" -C "$out" "${parts[@]}" && (cd "$out" && rm -rf "${parts[@]}")
exit $status
