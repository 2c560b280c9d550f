"""Statistics extension: per-model counters grow with each request."""

import numpy as np
import pytest

from helpers import IDENTITY_FP32, IRIS, fp32_batch


def _model_stats(proto, model):
    """(success.count, inference_count, execution_count) for the model."""
    if proto.protocol == "http":
        stats = proto.client.get_inference_statistics(model)
        entries = [s for s in stats["model_stats"] if s["name"] == model]
        assert entries, f"no statistics for {model}: {stats}"
        entry = entries[0]
        for key in ("name", "version", "inference_count", "execution_count"):
            assert key in entry, f"{key} missing from {entry}"
        success = entry["inference_stats"]["success"]
        for value in (
            entry["inference_count"],
            entry["execution_count"],
            success["count"],
            success["ns"],
        ):
            assert isinstance(value, int) and value >= 0
        return success["count"], entry["inference_count"], entry["execution_count"]
    stats = proto.client.get_inference_statistics(model)
    entries = [s for s in stats.model_stats if s.name == model]
    assert entries, f"no statistics for {model}: {stats}"
    entry = entries[0]
    return (
        entry.inference_stats.success.count,
        entry.inference_count,
        entry.execution_count,
    )


@pytest.mark.parametrize("batch", [1, 3])
def test_counters_grow(proto, batch):
    before = _model_stats(proto, IDENTITY_FP32)
    x = fp32_batch(batch, seed=7)
    result = proto.infer_identity_fp32(x)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    after = _model_stats(proto, IDENTITY_FP32)
    assert after[0] - before[0] == 1, (before, after)  # success.count: +1 per request
    assert after[1] - before[1] == batch, (before, after)  # inference_count: +batch
    assert after[2] - before[2] >= 1, (before, after)  # at least one execution


def test_counters_two_requests(proto):
    before = _model_stats(proto, IRIS)
    for rows in (2, 5):
        x = np.tile(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32), (rows, 1))
        proto.client.infer(
            IRIS,
            [proto.input("INPUT", x, "FP32")],
            outputs=[proto.output("PROBABILITIES")],
        )
    after = _model_stats(proto, IRIS)
    assert after[0] - before[0] == 2, (before, after)
    assert after[1] - before[1] == 7, (before, after)


def test_statistics_all_models_json(proto):
    # No model name: statistics for every model (grpc as_json: uint64 as strings).
    if proto.protocol == "http":
        stats = proto.client.get_inference_statistics()
    else:
        stats = proto.client.get_inference_statistics(as_json=True)
    names = {s["name"] for s in stats["model_stats"]}
    assert {IDENTITY_FP32, IRIS} <= names
