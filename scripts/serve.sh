#!/usr/bin/env bash
# Install the service (once) and serve the committed models on http://HOST:PORT (CPU by default).
#   ./scripts/serve.sh                        # 0.0.0.0:8000, CPU runtime
#   HOST=127.0.0.1 PORT=9000 ./scripts/serve.sh
#   EXTRAS=gpu DENOISE_PROVIDERS=tensorrt,cuda,cpu ./scripts/serve.sh   # NVIDIA GPU runtime
# Further configuration: DENOISE_* variables, see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "${EXTRAS:-cpu}"
# exec: uvicorn itself gets SIGTERM / Ctrl+C and shuts down gracefully (as in the Dockerfile).
# --no-access-log: the service writes its own access line (request id, status, time), so
# uvicorn's would say it twice.
exec .venv/bin/python -m uvicorn app.main:app --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --no-access-log --timeout-graceful-shutdown 25
