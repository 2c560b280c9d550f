#!/usr/bin/env bash
# Installs Evidently 0.7 (with scipy) from PyPI into monitor/.venv-evidently (git-ignored) and
# prints the path of its python executable on stdout (nothing else goes to stdout). The drift
# comparison test runs monitor/python/evidently_compare.py with it, to check Nereid's drift tests
# against Evidently's own; anyone can run this by hand too.
#
# Exit status: 0 ok; 3 python3 (3.11 or newer), its venv module or pip is missing (the test then
# skips, saying why, or fails where it is required: see nereid-testkit); anything else is a real
# failure (for example no network), which fails the test.
#
# Small on purpose: `pip install evidently` pulls in about 1 GB (pyarrow, statsmodels, litellm,
# uvicorn, ...). Here evidently is installed without its declared dependencies, next to only the
# packages that `import evidently`, its stat tests and Report(DataDriftPreset) really import, all
# pinned exactly and installed with --no-deps (so no resolver runs). Evidently 0.7.23 does not
# import with pandas 3 (pandas.core.dtypes.common.infer_dtype_from_object is gone), hence pandas
# 2.3.3. plotly and scikit-learn are imported at `import evidently`, and plotly draws the drift
# widgets during Report.run, so they stay. No .pyc is written at install (--no-compile: 225 MB for
# modules never imported); a warm-up run compiles the modules that are imported instead. The first
# install takes about half a minute and leaves about 530 MB. No pip cache is written.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../testkit/python-venv.sh"

PACKAGE="evidently==0.7.23"
DEPS=(
    # numerics
    "numpy==2.4.6" "scipy==1.17.1"
    "pandas==2.3.3" "python-dateutil==4.0.0" "pytz==2026.6" "tzdata==2026.6"
    # evidently's own model and config layer
    "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0"
    "typing-extensions==4.16.0" "typing-inspection==0.4.5" "typing-inspect==0.9.0"
    "mypy-extensions==1.2.0" "uuid6==2025.0.1" "PyYAML==6.0.4" "deprecation==2.1.0"
    "packaging==26.4" "ujson==6.1.0" "fsspec==2026.9.0"
    # imported by `import evidently` (legacy metrics, widgets, descriptors, UI, tracing)
    "plotly==5.24.1" "narwhals==2.29.0"
    "scikit-learn==1.9.1" "joblib==1.6.0" "threadpoolctl==3.8.0" "cloudpickle==3.1.3"
    "nltk==3.10.4" "regex==2026.12.2"
    "requests==2.34.2" "urllib3==2.8.0" "idna==3.21" "certifi==2026.10.19.post1"
    "litestar==2.25.0" "msgspec==0.23.0" "multidict==7.2.1" "multipart==2.0.1"
    "anyio==4.16.0" "sniffio==1.3.1"
    "opentelemetry-proto==1.45.2" "protobuf==7.36.2"
)

monitor_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${NEREID_EVIDENTLY_VENV:-$monitor_dir/.venv-evidently}"
# The marker names the whole pinned set, so changing any pin reinstalls.
set_hash=$(printf '%s\n' "$PACKAGE" "${DEPS[@]}" | sha256sum | cut -c1-12)
marker="$venv/.nereid-installed-$PACKAGE-$set_hash"

# Concurrent test processes share one install.
exec 9>"$venv.lock"
flock 9

if [ -f "$marker" ] && [ -x "$venv/bin/python" ]; then
    echo "$venv/bin/python"
    exit 0
fi
make_venv "$venv" "3.11" "the pinned numpy and scipy"
echo "installing $PACKAGE and ${#DEPS[@]} pinned dependencies into $venv" >&2
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-cache-dir \
    --quiet --no-deps --no-compile "$PACKAGE" "${DEPS[@]}" >&2; then
    echo "pip install failed" >&2
    exit 1
fi

# Warm-up and smoke test: import evidently, run every stat test the comparison uses and a
# DataDriftPreset report. Writing bytecode here (whatever PYTHONDONTWRITEBYTECODE says) compiles
# just the modules these paths import, which halves the start-up time of later runs.
if ! env -u PYTHONDONTWRITEBYTECODE "$venv/bin/python" - >&2 <<'PY'; then
import contextlib, io, warnings
warnings.simplefilter("ignore")
with contextlib.redirect_stdout(io.StringIO()):
    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(0)
    num_r, num_c = pd.Series(rng.normal(size=60)), pd.Series(rng.normal(size=50))
    cat_r, cat_c = pd.Series(rng.choice(list("abc"), 60)), pd.Series(rng.choice(list("abc"), 50))
    for names, ft, r, c in [
        (["ks", "wasserstein", "anderson", "mannw", "t_test", "ed"], ColumnType.Numerical, num_r, num_c),
        (["chisquare", "z", "TVD"], ColumnType.Categorical, cat_r, cat_c),
        (["jensenshannon", "psi", "kl_div", "hellinger"], ColumnType.Numerical, num_r, num_c),
        (["jensenshannon", "psi", "kl_div", "hellinger"], ColumnType.Categorical, cat_r, cat_c),
    ]:
        for name in names:
            get_stattest(r, c, ft, name)(r.copy(), c.copy(), ft, None)
    get_stattest(num_r, num_c, ColumnType.Numerical, None)
    definition = DataDefinition(numerical_columns=["x"], categorical_columns=["y"], text_columns=[])
    ref = Dataset.from_pandas(pd.DataFrame({"x": num_r, "y": cat_r}), data_definition=definition)
    cur = Dataset.from_pandas(pd.DataFrame({"x": num_c, "y": cat_c}), data_definition=definition)
    Report([DataDriftPreset()], include_tests=True).run(cur, ref).dict()
PY
    echo "the installed evidently failed its smoke test" >&2
    exit 1
fi
touch "$marker"
echo "$venv/bin/python"
