# Shared by tools/device/measure.sh and band_steps.sh (sourced from the repository root; not a
# program of its own).

# usage_check SCRIPT ARGS...: exit 2 with SCRIPT's usage line unless ARGS are SIZE OUT [RANKS]
usage_check() {
    local script=$1
    shift
    if [ $# -lt 2 ] || [[ ! $1 =~ ^[0-9]+$ ]] || { [ $# -ge 3 ] && [[ ! $3 =~ ^[0-9]+$ ]]; }; then
        echo "usage: bash tools/device/$script SIZE OUT [RANKS]" >&2
        exit 2
    fi
}

# step NAME COMMAND...: run COMMAND with its output in $out/NAME.log, the command line added to
# $commands_log; a failure sets $status and does not stop the caller
step() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$commands_log"
    "$@" >"$out/$name.log" 2>&1 || { status=$?; echo "== $name failed ($status)" >&2; }
}
