# Sourced by serve.sh and test.sh: make .venv if missing and install the project with the given
# extras, quietly, and only when pyproject.toml or the extras changed since the last install.
# shellcheck shell=bash

ensure_venv() {
    local extras="$1"
    local python="${PYTHON:-python3}"
    if [[ ! -x .venv/bin/python ]]; then
        echo "creating .venv with $("$python" --version)" >&2
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed-${extras//,/-}"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    # onnxruntime and onnxruntime-gpu install the same module: never keep both.
    if [[ ",$extras," == *",gpu,"* ]]; then
        .venv/bin/python -m pip uninstall -q -y onnxruntime >/dev/null 2>&1 || true
    else
        .venv/bin/python -m pip uninstall -q -y onnxruntime-gpu >/dev/null 2>&1 || true
    fi
    echo "installing .[$extras] into .venv (once; skipped while pyproject.toml is unchanged)" >&2
    # Build back-ends print warnings even under -q: keep them in a log, show it only on failure.
    local log=".venv/pip-install.log"
    if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "pip install failed; full log in $log" >&2
        return 1
    fi
    echo "$want" >"$stamp"
}
