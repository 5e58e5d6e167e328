#!/usr/bin/env bash
# Runs the whole test suite, interop with the stock Dynamo 1.6.1 frontend included.
#
# Installs what the tests need on the first run (reused afterwards):
#   .venv/        dynamo-lite with its dev extra (pytest, etcd, nats-server, ...)
#   .stock-venv/  the stock frontend (scripts/install_stock.sh)
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
PYTHON="$PYTHON" scripts/install_stock.sh

# The interop tests must run, not skip, from here on.
export DYN_LITE_REQUIRE_INTEROP=1
exec .venv/bin/python -m pytest "$@"
