"""Error handling: each bad request raises InferenceServerException with
Triton's message, and the same client can serve a good request right after."""

import numpy as np
import pytest

from tritonclient.utils import InferenceServerException

from helpers import IDENTITY_FP32, assert_still_serves, fp32_batch


def test_unknown_model(transport):
    x = fp32_batch(1)
    with pytest.raises(InferenceServerException) as exc:
        transport.client.infer(
            "nope",
            [transport.input("INPUT0", x, "FP32")],
            outputs=[transport.output("OUTPUT0")],
        )
    assert "Request for unknown model: 'nope' is not found" in str(exc.value)
    assert_still_serves(transport)


def test_wrong_datatype(transport):
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    with pytest.raises(InferenceServerException) as exc:
        transport.client.infer(
            IDENTITY_FP32,
            [transport.input("INPUT0", x, "INT32")],
            outputs=[transport.output("OUTPUT0")],
        )
    assert "data-type is" in str(exc.value)
    assert_still_serves(transport)


def test_wrong_shape(transport):
    x = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        transport.client.infer(
            IDENTITY_FP32,
            [transport.input("INPUT0", x, "FP32")],
            outputs=[transport.output("OUTPUT0")],
        )
    assert "unexpected shape for input" in str(exc.value)
    assert_still_serves(transport)


def test_batch_larger_than_max_batch_size(transport):
    # identity_fp32 has max_batch_size 8. (Only the rejection is checked; Triton
    # says "inference request batch-size must be <= 8 for 'identity_fp32'".)
    x = np.zeros((9, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException):
        transport.client.infer(
            IDENTITY_FP32,
            [transport.input("INPUT0", x, "FP32")],
            outputs=[transport.output("OUTPUT0")],
        )
    assert_still_serves(transport)


def test_several_errors_in_a_row_then_success(transport):
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            transport.client.infer(
                "nope",
                [transport.input("INPUT0", fp32_batch(1), "FP32")],
                outputs=[transport.output("OUTPUT0")],
            )
    assert_still_serves(transport)
