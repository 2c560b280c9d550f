"""Inference on the default models, over HTTP (binary and JSON tensors) and gRPC."""

import re

import numpy as np
import pytest

from helpers import (
    IDENTITY_BYTES,
    IRIS,
    IRIS_LABELS,
    IRIS_SAMPLES,
    as_bytes_list,
    fp32_batch,
)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_identity_fp32(transport, batch):
    x = fp32_batch(batch, seed=batch)
    result = transport.infer_identity_fp32(x)
    y = result.as_numpy("OUTPUT0")
    assert y.dtype == np.float32
    assert y.shape == (batch, 16)
    np.testing.assert_array_equal(y, x)


UTF8_STRINGS = [
    b"hello",
    b"",
    "héllo wörld".encode("utf-8"),
    "日本語テキスト".encode("utf-8"),
    "emoji \U0001F680".encode("utf-8"),
    b"with space and \"quotes\" and \\backslash",
]


def _identity_bytes(transport, array):
    result = transport.client.infer(
        IDENTITY_BYTES,
        [transport.input("INPUT0", array, "BYTES")],
        outputs=[transport.output("OUTPUT0")],
    )
    y = result.as_numpy("OUTPUT0")
    assert y.shape == array.shape
    return y


def test_identity_bytes_single(transport):
    x = np.array([UTF8_STRINGS], dtype=np.object_)  # shape [1, 6]
    y = _identity_bytes(transport, x)
    assert as_bytes_list(y) == UTF8_STRINGS


def test_identity_bytes_batch(transport):
    x = np.array(
        [[b"a", b"", "ä".encode()], [b"", b"", b""], ["ß✓".encode(), b"xyz", b"0"]],
        dtype=np.object_,
    )  # shape [3, 3]
    y = _identity_bytes(transport, x)
    assert as_bytes_list(y) == as_bytes_list(x)


def test_identity_bytes_only_empty_string(transport):
    x = np.array([[b""]], dtype=np.object_)
    y = _identity_bytes(transport, x)
    assert as_bytes_list(y) == [b""]


def test_identity_bytes_arbitrary_binary(transport):
    # BYTES is raw bytes in Triton: binary tensor data may carry non-UTF-8
    # bytes (JSON tensors cannot, so that variant is skipped).
    if transport.protocol == "http" and not transport.binary:
        pytest.skip("non-UTF-8 bytes cannot be sent as JSON")
    values = [b"\x00\x01\x02", b"\xff\xfe\xfd", b"a\x00b", b""]
    x = np.array([values], dtype=np.object_)
    y = _identity_bytes(transport, x)
    assert as_bytes_list(y) == values


def _iris_inputs():
    return np.array([s for s, _ in IRIS_SAMPLES], dtype=np.float32)


def test_iris_predictions(transport):
    x = _iris_inputs()  # [3, 4]
    result = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES")],
    )
    probs = result.as_numpy("PROBABILITIES")
    assert probs.dtype == np.float32
    assert probs.shape == (3, 3)
    assert np.all(probs >= 0.0) and np.all(probs <= 1.0)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(3), atol=1e-5)
    assert list(np.argmax(probs, axis=1)) == [label for _, label in IRIS_SAMPLES]


@pytest.mark.parametrize("index", range(len(IRIS_SAMPLES)))
def test_iris_single_sample(transport, index):
    sample, label = IRIS_SAMPLES[index]
    x = np.array([sample], dtype=np.float32)
    result = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES")],
    )
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (1, 3)
    assert int(np.argmax(probs[0])) == label
    assert abs(float(probs.sum()) - 1.0) <= 1e-5


CLASS_ENTRY = re.compile(r"^(\d+\.\d{6}):(\d+):(\w+)$")


def _parse_classes(row):
    parsed = []
    for entry in as_bytes_list(row):
        text = entry.decode("utf-8")
        m = CLASS_ENTRY.match(text)
        assert m, f"classification entry {text!r} is not 'value:index:label' with %f value"
        parsed.append((float(m.group(1)), int(m.group(2)), m.group(3)))
    return parsed


def test_classification_setosa_top2(transport):
    sample, _ = IRIS_SAMPLES[0]
    x = np.array([sample], dtype=np.float32)
    result = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES", class_count=2)],
    )
    classes = result.as_numpy("PROBABILITIES")
    assert classes.shape == (1, 2)
    first = as_bytes_list(classes[0])[0].decode("utf-8")
    assert first.endswith(":0:setosa"), first
    parsed = _parse_classes(classes[0])
    assert parsed[0][0] >= parsed[1][0], "classes must be sorted by value, descending"
    assert all(0.0 <= value <= 1.0 for value, _, _ in parsed)


def test_classification_batch_all_classes(transport):
    x = _iris_inputs()
    result = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES", class_count=3)],
    )
    classes = result.as_numpy("PROBABILITIES")
    assert classes.shape == (3, 3)
    for row, (_, expected) in zip(classes, IRIS_SAMPLES):
        parsed = _parse_classes(row)
        assert parsed[0][1] == expected
        assert parsed[0][2] == IRIS_LABELS[expected]
        assert sorted(i for _, i, _ in parsed) == [0, 1, 2]
        for _, i, label in parsed:
            assert label == IRIS_LABELS[i]
        values = [v for v, _, _ in parsed]
        assert values == sorted(values, reverse=True)
        # %f rounds to 6 decimals: three of them still sum to ~1.
        assert abs(sum(values) - 1.0) <= 3e-6 + 1e-5


def test_classification_matches_probabilities(transport):
    sample, _ = IRIS_SAMPLES[1]
    x = np.array([sample], dtype=np.float32)
    probs = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES")],
    ).as_numpy("PROBABILITIES")[0]
    classes = transport.client.infer(
        IRIS,
        [transport.input("INPUT", x, "FP32")],
        outputs=[transport.output("PROBABILITIES", class_count=1)],
    ).as_numpy("PROBABILITIES")
    assert classes.shape == (1, 1)
    ((value, index, label),) = _parse_classes(classes[0])
    assert index == int(np.argmax(probs))
    assert label == IRIS_LABELS[index]
    assert f"{float(probs[index]):f}" == f"{value:f}"
