#!/usr/bin/env bash
# Install the stock NVIDIA Dynamo frontend (and its sample worker) into a private
# virtualenv used by the interop tests. Safe to run repeatedly: an install that
# already works is left alone.
#
#   DYN_LITE_STOCK_VENV  target venv (default: <repo>/.stock-venv)
#   PYTHON               interpreter used to create the venv (default: python3)
set -euo pipefail

VERSION="1.6.1"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DYN_LITE_STOCK_VENV:-$REPO_ROOT/.stock-venv}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.dynamo-lite-stock-version"
# `import dynamo.frontend` by itself only reads a version string; the entry modules
# pull in the compiled runtime, which is what actually breaks when an install is bad.
PROBE='import dynamo.frontend, dynamo.frontend.main, dynamo.common.backend.sample_main; print(dynamo.frontend.__version__)'

log() { printf '[install_stock] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

probe_ok() {
    local got
    got="$("$VENV/bin/python" -c "$PROBE" 2>/dev/null | tail -n 1)" || return 1
    [[ "$got" == "$VERSION" ]]
}

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$VERSION" ]] && probe_ok; then
    log "stock Dynamo $VERSION already installed in $VENV; nothing to do"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); ai-dynamo $VERSION needs Python >= 3.10"

if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
    if [[ -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
        die "$VENV exists and is not a virtualenv; remove it or set DYN_LITE_STOCK_VENV"
    fi
fi

# Reuse a venv whose interpreter still runs (pip then only adds what is missing);
# rebuild one whose base interpreter has gone away.
if [[ -f "$VENV/pyvenv.cfg" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "existing venv at $VENV is broken; recreating it"
    rm -rf -- "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV with $("$PYTHON" -V 2>&1) ($(command -v "$PYTHON"))"
    "$PYTHON" -m venv "$VENV" || die "could not create venv at $VENV"
fi

rm -f -- "$MARKER"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)

log "installing ai-dynamo-runtime==$VERSION and its dependencies"
"${PIP[@]}" install "ai-dynamo-runtime==$VERSION" packaging pyyaml msgspec \
    || die "pip install ai-dynamo-runtime==$VERSION failed"

# ai-dynamo's own requirements (transformers, kubernetes, redis, ...) are heavy and
# unused by the frontend and sample worker; the runtime above covers what they import.
log "installing ai-dynamo==$VERSION (without dependencies)"
"${PIP[@]}" install --no-deps "ai-dynamo==$VERSION" \
    || die "pip install --no-deps ai-dynamo==$VERSION failed"

log "verifying the install"
if ! out="$("$VENV/bin/python" -c "$PROBE" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "stock frontend does not import in $VENV"
fi
got="$(printf '%s\n' "$out" | tail -n 1)"
[[ "$got" == "$VERSION" ]] || die "expected ai-dynamo $VERSION, found '$got'"

printf '%s\n' "$VERSION" >"$MARKER"
log "stock Dynamo $VERSION ready: $VENV/bin/python -m dynamo.frontend"
