"""Small helpers shared by the test modules.

`Transport` hides the few API differences between tritonclient.http and
tritonclient.grpc (the http client takes a `binary_data` flag on inputs and
requested outputs, the grpc one does not), so one test body can run over
HTTP with binary tensors, HTTP with JSON tensors, and gRPC.
"""

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

# Models of the default model repository (<repo root>/model-repo).
IDENTITY_FP32 = "identity_fp32"
IDENTITY_BYTES = "identity_bytes"
IRIS = "iris_classifier"
ALL_MODELS = (IDENTITY_FP32, IDENTITY_BYTES, IRIS)

IRIS_LABELS = ("setosa", "versicolor", "virginica")
# (features in cm, expected class index)
IRIS_SAMPLES = (
    ([5.1, 3.5, 1.4, 0.2], 0),  # setosa
    ([5.9, 3.0, 4.2, 1.5], 1),  # versicolor
    ([6.7, 3.1, 5.6, 2.4], 2),  # virginica
)

REQUIRED_EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
    "model_repository",
)


@dataclass
class Transport:
    """One way of talking to the server: protocol plus tensor encoding."""

    id: str  # "http-binary", "http-json", "grpc"
    protocol: str  # "http" or "grpc"
    mod: ModuleType  # tritonclient.http or tritonclient.grpc
    client: Any  # the module's InferenceServerClient
    binary: bool = True  # http only: binary tensor data or JSON

    def input(self, name, array, datatype, binary=None):
        inp = self.mod.InferInput(name, list(array.shape), datatype)
        if self.protocol == "http":
            inp.set_data_from_numpy(
                array, binary_data=self.binary if binary is None else binary
            )
        else:
            inp.set_data_from_numpy(array)
        return inp

    def output(self, name, class_count=0, binary=None):
        if self.protocol == "http":
            return self.mod.InferRequestedOutput(
                name,
                binary_data=self.binary if binary is None else binary,
                class_count=class_count,
            )
        return self.mod.InferRequestedOutput(name, class_count=class_count)

    def infer_identity_fp32(self, x, **kwargs):
        result = self.client.infer(
            IDENTITY_FP32,
            [self.input("INPUT0", x, "FP32")],
            outputs=[self.output("OUTPUT0")],
            **kwargs,
        )
        return result


def fp32_batch(batch, seed=0):
    """A [batch, 16] FP32 tensor with varied, exactly representable values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 16)).astype(np.float32) * np.float32(100)
    # A few awkward but JSON-representable values.
    x[0, 0] = 0.0
    x[0, 1] = -0.0
    x[0, 2] = np.float32(1e-30)
    x[0, 3] = np.float32(-3.0e38)
    x[0, 4] = np.float32(0.1)
    return x.astype(np.float32)


def as_bytes_list(array):
    """Flatten a BYTES result to a list of bytes.

    tritonclient returns `bytes` elements for binary BYTES outputs and `str`
    elements for JSON (binary_data=False) outputs; normalise to bytes.
    """
    out = []
    for item in np.asarray(array, dtype=np.object_).flatten():
        out.append(item.encode("utf-8") if isinstance(item, str) else bytes(item))
    return out


def assert_still_serves(transport):
    """After an error, a normal request on the same client must succeed."""
    x = fp32_batch(1, seed=99)
    result = transport.infer_identity_fp32(x)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
