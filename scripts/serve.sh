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
# app.server runs uvicorn on h11 with a bounded request head, a head timeout and a connection
# limit (DENOISE_MAX_HEADER_BYTES, DENOISE_HEADER_TIMEOUT_S, DENOISE_MAX_CONNECTIONS).
exec .venv/bin/python -m app.server --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --timeout-graceful-shutdown 25
