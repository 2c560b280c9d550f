#!/usr/bin/env bash
# Installs an MLflow tracking server from PyPI into pipeline/.venv-mlflow (git-ignored) and prints
# the path of its `mlflow` executable on stdout (nothing else goes to stdout). tests/mlflow.rs
# runs this to mirror runs to a real server; anyone can run it by hand too.
#
# Exit status: 0 ok; 3 python3, its venv module or pip is missing (the test then skips, saying
# why); anything else is a real failure (for example no network), which fails the test.
# The first install takes about 1.5 minutes and 850 MB.
set -euo pipefail

# Pinned: the REST API used (api/2.0/mlflow) is stable, but the server's dependencies are many.
PACKAGE="mlflow==3.17.2"

pipeline_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${NEREID_MLFLOW_VENV:-$pipeline_dir/.venv-mlflow}"
marker="$venv/.nereid-installed-$PACKAGE"

# Concurrent test processes share one install.
exec 9>"$venv.lock"
flock 9

if [ -f "$marker" ] && [ -x "$venv/bin/mlflow" ]; then
    echo "$venv/bin/mlflow"
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found" >&2
    exit 3
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "python3 has no venv/ensurepip module (install python3-venv)" >&2
    exit 3
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed" >&2; exit 3; }
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "pip is not available in the virtualenv" >&2
    exit 3
fi
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet "$PACKAGE" >&2
touch "$marker"
echo "$venv/bin/mlflow"
