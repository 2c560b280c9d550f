#!/usr/bin/env python3
"""Evidently 0.7's drift scores for given data, for comparing Nereid's drift tests with Evidently.

Usage: evidently_compare.py IN.json OUT.json   (run with the python that
monitor/ci/evidently-venv.sh prints; it pins evidently==0.7.23 and scipy==1.17.1).

APIs used:
- Column cases: Evidently's legacy stat-test registry, the code that every Evidently drift
  metric ends in: `evidently.legacy.calculations.stattests.get_stattest(reference, current,
  feature_type, name)` gives the registered `StatTest`, and calling it with threshold None gives a
  `StatTestResult` (drift_score, drifted, actual_threshold: the test's default threshold).
  `get_stattest(..., None)` is Evidently's default choice for the column (`_get_default_stattest`).
- Dataset cases: the NEW (0.7) API only, no legacy Report: `evidently.Report([DataDriftPreset()],
  include_tests=True).run(Dataset.from_pandas(current, data_definition=...), Dataset.from_pandas(
  reference, ...))`, then `Snapshot.dict()`: one `ValueDrift` metric per column (its config holds
  the method's display name and the threshold, its value the score, its "drift" test FAILs when
  the column drifted) and the `DriftedColumnsCount` metric (count and share of drifted columns;
  its "lt" test FAILs when share >= drift_share, which is the dataset-drift verdict).

Input:
  {"columns": [{"name": "c1", "type": "num" | "cat", "reference": [...], "current": [...],
                "methods": ["ks", "TVD", ...], "clean": true}],
   "datasets": [{"name": "d1", "reference": {"col": [...]}, "current": {"col": [...]},
                 "numerical": ["col"], "categorical": [...], "text": [], "drift_share": 0.5}]}
  - JSON null (and NaN/Infinity tokens, which Python's json reads) become NaN/inf.
  - "clean" (default true): drop NaN and +-inf from both sides before testing, as Evidently's
    drift metrics do (`get_one_column_drift`); with false the raw Series go to the tests.
  - "numerical"/"categorical" absent: Evidently infers those roles (`infer_column_type`); "text"
    defaults to [] (no text drift), "drift_share" to 0.5.

Output:
  {"evidently": "0.7.23", "scipy": "...", "pandas": "...", "numpy": "...",
   "columns": [{"name", "type", "n_reference", "n_current",
                "default": {"method", "score", "drift", "threshold"},
                "results": {"ks": {"score", "drift", "threshold", "registered"}, ...}}],
   "datasets": [{"name", "columns": {"col": {"type", "method", "method_display", "score",
                 "drift", "threshold"}}, "drifted_count", "drifted_share", "drift_share",
                 "dataset_drift"}]}
  - A score that is NaN or infinite is written as null, with "nonfinite": "nan" | "inf" | "-inf".
  - "registered": false when the registry does not list the method for the column's type (e.g.
    chisquare or z on a "num" column: Evidently's default picks them for numeric columns with at
    most 5 distinct values, yet refuses them by name); the StatTest is then called directly, as
    the default path does.
  - A method, default, column or dataset that raises gives {"error": "Type: message"} in place.
  - "warnings": the distinct warning messages the test emitted, when there were some (e.g.
    anderson's "p-value floored"/"capped" at 0.001/0.25, chisquare's divide by zero for a
    category that the reference lacks); deprecation warnings are left out.
Nothing is printed on success but one summary line on stderr; exit status 0 even when some
tests raised (their errors are in the output), 2 for unusable arguments or input.
"""

import contextlib
import io
import json
import math
import sys
import warnings

warnings.simplefilter("ignore")  # before numpy/pandas/evidently import: they warn at import time


def main(argv):
    if len(argv) != 3:
        print("usage: evidently_compare.py IN.json OUT.json", file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"cannot read {argv[1]}: {e}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print("input must be a JSON object", file=sys.stderr)
        return 2

    # Anything a library prints goes nowhere: the output is the JSON file only.
    with contextlib.redirect_stdout(io.StringIO()):
        out = compute(doc)

    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, allow_nan=False)
        f.write("\n")
    n_err = count_errors(out)
    print(
        f"evidently_compare: {len(out['columns'])} column case(s), {len(out['datasets'])} dataset "
        f"case(s), {n_err} error(s)",
        file=sys.stderr,
    )
    return 0


def compute(doc):
    import numpy as np
    import pandas as pd
    import scipy

    import evidently

    out = {
        "evidently": evidently.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "columns": [],
        "datasets": [],
    }
    for case in doc.get("columns") or []:
        out["columns"].append(guard(lambda: column_case(case), name_of(case)))
    for case in doc.get("datasets") or []:
        out["datasets"].append(guard(lambda: dataset_case(case), name_of(case)))
    return out


def name_of(case):
    return case.get("name") if isinstance(case, dict) else None


def guard(fn, name=None):
    """fn()'s result, or {"error": ...} (with "name" when known) when it raises."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the output
        err = {"error": describe(e)}
        if name is not None:
            err = {"name": name, **err}
        return err


def describe(e):
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Column cases: the registry's stat tests on two Series.


def column_case(case):
    import numpy as np
    import pandas as pd
    from evidently.legacy.core import ColumnType

    name = case.get("name")
    kind = case.get("type")
    if kind == "num":
        feature_type = ColumnType.Numerical
        reference = pd.Series(nullable(case["reference"]), dtype="float64")
        current = pd.Series(nullable(case["current"]), dtype="float64")
    elif kind == "cat":
        feature_type = ColumnType.Categorical
        reference = pd.Series(nullable(case["reference"]))
        current = pd.Series(nullable(case["current"]))
    else:
        raise ValueError(f"column type must be 'num' or 'cat', not {kind!r}")

    if case.get("clean", True):
        # Exactly what get_one_column_drift does before choosing and running the test.
        reference = reference.replace([-np.inf, np.inf], np.nan).dropna()
        current = current.replace([-np.inf, np.inf], np.nan).dropna()

    result = {
        "name": name,
        "type": kind,
        "n_reference": int(reference.shape[0]),
        "n_current": int(current.shape[0]),
    }
    empty = None
    if case.get("clean", True) and (reference.empty or current.empty):
        # Evidently's drift metrics refuse an empty side (after cleaning) with this error.
        side = "reference" if reference.empty else "current"
        empty = {
            "error": f"ValueError: An empty column '{name}' was provided for drift calculation "
            f"in the {side} dataset."
        }

    result["default"] = empty or run_default(reference, current, feature_type)
    result["results"] = {}
    for method in case.get("methods") or []:
        result["results"][method] = empty or run_method(method, reference, current, feature_type)
    return result


def nullable(values):
    if not isinstance(values, list):
        raise ValueError("reference and current must be JSON arrays")
    return [float("nan") if v is None else v for v in values]


def run_default(reference, current, feature_type):
    from evidently.legacy.calculations.stattests import get_stattest

    def go():
        stattest = get_stattest(reference, current, feature_type, None)
        res = call_test(stattest, reference, current, feature_type)
        return {"method": stattest.name, **res}

    return guard(go)


def run_method(method, reference, current, feature_type):
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.calculations.stattests.registry import StatTestInvalidFeatureTypeError
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    def go():
        registered = True
        try:
            stattest = get_stattest(reference, current, feature_type, method)
        except StatTestInvalidFeatureTypeError:
            # Registered for the other type only: call the StatTest anyway, as Evidently's default
            # choice does for chisquare/z on numeric columns with few values.
            registered = False
            stattest = next(iter(_registered_stat_tests[method].values()))
        res = call_test(stattest, reference, current, feature_type)
        res["registered"] = registered
        return res

    return guard(go)


def call_test(stattest, reference, current, feature_type):
    # Copies: some tests change their input (hellinger drops NaN in place).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = stattest(reference.copy(), current.copy(), feature_type, None)
    out = score_fields(res.drift_score)
    out["drift"] = bool(res.drifted)
    out["threshold"] = float(res.actual_threshold)
    messages = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        msg = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        if "`midrank` will be removed" in msg:
            continue  # scipy 1.17's anderson_ksamp says this on every call from Evidently
        if msg not in messages:
            messages.append(msg)
    if messages:
        out["warnings"] = messages
    return out


def score_fields(score):
    """{"score": float or null[, "nonfinite": "nan" | "inf" | "-inf"]}."""
    try:
        x = float(score)
    except (TypeError, ValueError):
        return {"score": None, "nonfinite": repr(score)}
    if math.isnan(x):
        return {"score": None, "nonfinite": "nan"}
    if math.isinf(x):
        return {"score": None, "nonfinite": "inf" if x > 0 else "-inf"}
    return {"score": x}


# ---------------------------------------------------------------------------------------------
# Dataset cases: the new API's DataDriftPreset.


def dataset_case(case):
    from evidently import DataDefinition
    from evidently import Dataset
    from evidently import Report
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.presets import DataDriftPreset

    name = case.get("name")
    reference = frame(case["reference"])
    current = frame(case["current"])
    drift_share = float(case.get("drift_share", 0.5))

    definition = DataDefinition(
        numerical_columns=case.get("numerical"),
        categorical_columns=case.get("categorical"),
        text_columns=case.get("text", []),
    )
    cur_ds = Dataset.from_pandas(current, data_definition=definition)
    ref_ds = Dataset.from_pandas(reference, data_definition=definition)
    report = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True)
    snapshot = report.run(cur_ds, ref_ds)
    snap = snapshot.dict()

    # The ValueDrift config names the method by its display name ("K-S p_value").
    display_to_name = {
        st.display_name: st.name
        for by_type in _registered_stat_tests.values()
        for st in by_type.values()
    }
    status_by_metric = {}
    for test in snap["tests"]:
        metric_id = test["metric_config"]["metric_id"]
        status_by_metric.setdefault(metric_id, {})[test["id"]] = test["status"]

    columns = {}
    counted = None
    for metric in snap["metrics"]:
        config = metric["config"]
        kind = config["type"]
        tests = status_by_metric.get(metric["id"], {})
        if kind.endswith(":ValueDrift"):
            column = config["column"]
            display = config.get("method")
            entry = {
                "type": cur_ds.data_definition.get_column_type(column).value,
                "method": display_to_name.get(display, display),
                "method_display": display,
                **score_fields(metric["value"]),
                "drift": status(tests.get("drift")) == "FAIL",
                "threshold": config.get("threshold"),
            }
            columns[column] = entry
        elif kind.endswith(":DriftedColumnsCount"):
            counted = (metric["value"], status(tests.get("lt")))

    if counted is None:
        raise RuntimeError("the report has no DriftedColumnsCount metric")
    (value, lt_status) = counted
    share = float(value["share"])
    result = {
        "name": name,
        "columns": columns,
        "drifted_count": int(value["count"]),
        "drifted_share": share,
        "drift_share": drift_share,
        # The preset's test on the share: "Less than drift_share" FAILs on dataset drift.
        "dataset_drift": lt_status == "FAIL" if lt_status is not None else share >= drift_share,
    }
    n_drifted = sum(1 for c in columns.values() if c["drift"])
    if n_drifted != result["drifted_count"] or len(columns) == 0:
        result["inconsistent"] = (
            f"{n_drifted} of {len(columns)} ValueDrift metrics drifted, DriftedColumnsCount says "
            f"{result['drifted_count']}"
        )
    return result


def frame(columns):
    import pandas as pd

    if not isinstance(columns, dict):
        raise ValueError("a dataset's reference and current must be objects of column arrays")
    return pd.DataFrame({k: nullable(v) for k, v in columns.items()})


def status(s):
    if s is None:
        return None
    return getattr(s, "value", s)


def count_errors(out):
    n = 0
    for c in out["columns"]:
        if "error" in c:
            n += 1
            continue
        n += "error" in c["default"]
        n += sum(1 for r in c["results"].values() if "error" in r)
    n += sum(1 for d in out["datasets"] if "error" in d)
    return n


if __name__ == "__main__":
    sys.exit(main(sys.argv))
