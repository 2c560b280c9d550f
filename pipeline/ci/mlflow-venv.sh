#!/usr/bin/env bash
# Installs an MLflow tracking server from PyPI into pipeline/.venv-mlflow (git-ignored) and prints
# the path of its `mlflow` executable on stdout (nothing else goes to stdout). tests/mlflow.rs
# runs this to mirror runs to a real server; anyone can run it by hand too.
#
# Exit status: 0 ok; 3 python3 (3.11 or newer), its venv module or pip is missing (the test then
# skips, saying why, or fails where it is required: see nereid-testkit); anything else is a real failure (for example no network), which fails the test.
# The first install takes about a minute and 360 MB: the tracking server's own dependencies on top
# of mlflow-skinny, not the full `mlflow` package (850 MB with scikit-learn, scipy, pyarrow and
# matplotlib, none of which the server needs). No pip cache is written.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../testkit/python-venv.sh"

# Pinned: the REST API used (api/2.0/mlflow) is stable, but the server's dependencies are many.
PACKAGE="mlflow-skinny==3.17.2"
SERVER_DEPS=(
    "mlflow-tracing==3.17.2" "Flask==3.1.3" "flask-cors==6.0.5" "alembic==1.20.1"
    "SQLAlchemy==2.1.9" "gunicorn==27.0.1" "graphene==3.4.3" "huey==3.5.4" "aiohttp==3.14.5"
    "cryptography==50.0.2" "numpy==2.4.6" "pandas==3.1.1" "uvicorn==0.54.0"
)

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
make_venv "$venv" "3.11" "the pinned MLflow server"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-cache-dir --quiet \
    "$PACKAGE" "${SERVER_DEPS[@]}" >&2
touch "$marker"
echo "$venv/bin/mlflow"
