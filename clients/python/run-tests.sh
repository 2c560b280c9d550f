#!/usr/bin/env bash
# Runs the tritonclient (Python) protocol-compatibility tests against Nereid.
#
#   bash clients/python/run-tests.sh [extra pytest args]
#
# Environment:
#   NEREID_BIN       server binary (default: <repo root>/target/debug/nereid)
#   PYTHON           interpreter used to create the venv (default: python3)
#   NEREID_PYTHON_TESTS_REQUIRED=1 (or CI set)
#                    turn the skip cases below (no usable python3 or venv
#                    module) into failures (exit 1).
#
# Exit status: 0 when the tests pass; 3 when they cannot run because Python
# itself is missing (the reason on stderr; server/tests/tritonclient.rs then
# skips or fails, see nereid-testkit); anything else when a test fails or the
# requirements cannot be installed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
REQUIREMENTS="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

skip() {
    echo "$*" >&2
    case "${CI:-}" in "" | 0 | false | False | FALSE) ci=0 ;; *) ci=1 ;; esac
    if [ "${NEREID_PYTHON_TESTS_REQUIRED:-0}" = "1" ] || [ "$ci" = "1" ]; then
        echo "the tritonclient suite is required here (CI or NEREID_PYTHON_TESTS_REQUIRED=1): failing" >&2
        exit 1
    fi
    exit 3
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    skip "$PYTHON not found"
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
    skip "$("$PYTHON" --version 2>&1 || echo "$PYTHON") is older than 3.11, which the pinned requirements need"
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    skip "$PYTHON has no working venv/ensurepip module (on Debian: apt-get install python3-venv)"
fi

# The stamp covers requirements.txt and the interpreter version: a change in
# either reinstalls.
want_hash="$(
    { cat "$REQUIREMENTS"; "$PYTHON" -c 'import sys; print(sys.version)'; } |
        "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
)"

if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV" # broken (e.g. its interpreter is gone)
fi
if [ ! -x "$VENV/bin/python" ]; then
    venv_log="$(mktemp)"
    if ! "$PYTHON" -m venv "$VENV" >"$venv_log" 2>&1; then
        reason="$(tail -n 3 "$venv_log" | tr '\n' ' ')"
        rm -f "$venv_log"
        rm -rf "$VENV"
        skip "could not create a virtual environment with $PYTHON -m venv: $reason"
    fi
    rm -f "$venv_log"
fi

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want_hash" ]; then
    rm -f "$STAMP"
    echo "Installing Python test requirements into $VENV ..."
    pip_log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
        -r "$REQUIREMENTS" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        reason="$(grep -E 'ERROR|Error|error' "$pip_log" | tail -n 2 | tr '\n' ' ')"
        rm -f "$pip_log"
        # Python is here, so the suite must run: a failed install is a failure, not a skip.
        echo "error: pip could not install $REQUIREMENTS: ${reason:-see pip output above}" >&2
        exit 1
    fi
    rm -f "$pip_log"
    echo "$want_hash" >"$STAMP"
fi

export NEREID_BIN="${NEREID_BIN:-$REPO_ROOT/target/debug/nereid}"
if [ -z "${NEREID_HTTP_URL:-}" ] && [ ! -x "$NEREID_BIN" ]; then
    echo "error: Nereid server binary not found at $NEREID_BIN (run cargo build, or set NEREID_BIN)" >&2
    exit 1
fi

cd "$REPO_ROOT"
# pytest's exit status (non-zero on any failure or error) becomes ours.
# NEREID_PYTHON_TESTS picks another folder of tests (server/tests/onnx_backend.rs runs
# clients/python/onnx against the ONNX server it starts).
exec "$VENV/bin/python" -m pytest -q "${NEREID_PYTHON_TESTS:-clients/python/tests}" "$@"
