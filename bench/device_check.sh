#!/usr/bin/env bash
# The GPU check in one command (issue 11): bench/README.md "GPU check" gives the device
# tool call. On the GPU machine:   bash bench/device_check.sh            (or make device-check)
# Here, before that, once:         bash bench/device_check.sh --fetch-wheels
# A dry run on a CPU:              PYTHON=.venv/bin/python bash bench/device_check.sh --dry-run
#
# The GPU machine has torch, numpy, h5py, pandas, matplotlib, pyyaml, pytest and hypothesis,
# but not pydantic, which fl_core needs. So pydantic and its needs travel as wheels in .whl/
# (ignored by git, named in the tool's `carry`) and are installed into /tmp/site here first.
# Every other argument goes to bench/device_check.py; its summary goes to $OUT (the folder
# the device tool brings back), else runs/device_check.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${DEVICE_CHECK_WHEELS:-.whl}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
# pydantic and what it needs, at the versions of the environment that fetches them
PKGS="pydantic pydantic-core typing-extensions annotated-types typing-inspection"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

fetch_wheels() {
    # Run where pip can reach the index: CPython 3.12 x86-64 wheels, one version of each
    # (two versions of one package stop the install there).
    local pins="" p v
    for p in $PKGS; do
        v=$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))") || { echo "device_check: $p is not installed in $PY" >&2; return 2; }
        pins="$pins $p==$v"
    done
    mkdir -p "$WHEELS"
    rm -f "$WHEELS"/pydantic-*.whl "$WHEELS"/pydantic_core-*.whl "$WHEELS"/typing_extensions-*.whl \
          "$WHEELS"/annotated_types-*.whl "$WHEELS"/typing_inspection-*.whl
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d "$WHEELS" $pins || return 2
    # the set resolves on its own, offline, for CPython 3.12 (what the machine will do)
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --dry-run --ignore-installed --no-index --find-links "$WHEELS" --only-binary=:all: \
        --python-version 3.12 --implementation cp $PLATFORMS --target /tmp/device_check_resolve pydantic || return 2
    ls -l "$WHEELS"
    du -sh "$WHEELS"
    echo "device_check: wheels ready for$pins; name $WHEELS in the device tool's carry"
}

ensure_pydantic() {
    "$PY" -c "import pydantic" 2>/dev/null && return 0
    if ! ls "$WHEELS"/pydantic-*.whl >/dev/null 2>&1; then
        echo "device_check: pydantic is missing and $WHEELS/ holds no wheels: run 'bash bench/device_check.sh --fetch-wheels' where pip works, and carry $WHEELS" >&2
        return 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || return 2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -c "import pydantic; print('device_check: pydantic', pydantic.VERSION, 'from', pydantic.__file__)"
}

check() {
    echo "# device_check.sh $(date -u +%FT%TZ) on ${HOSTNAME:-?}: $PY = $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ensure_pydantic || return 2
    "$PY" bench/device_check.py --out "$OUT_DIR" "$@"
}

if [ "${1:-}" = "--fetch-wheels" ]; then
    fetch_wheels
    exit $?
fi
OUT_DIR=${OUT:-runs/device_check}
mkdir -p "$OUT_DIR"
check "$@" 2>&1 | tee -a "$OUT_DIR/device_check.log"
exit "${PIPESTATUS[0]}"
