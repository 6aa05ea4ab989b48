#!/usr/bin/env bash
# Install the project with training and development extras (once) and run every test.
#   ./scripts/test.sh                 # all tests
#   ./scripts/test.sh tests/app -x    # arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "cpu,train,dev"
exec .venv/bin/python -m pytest "$@"
