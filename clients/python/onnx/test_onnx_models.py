"""NVIDIA's tritonclient against ONNX models served by Nereid's onnxruntime backend.

Run by server/tests/onnx_backend.rs, which builds the models (server/tests/onnx/make_models.py),
starts the server and points this module at it with NEREID_HTTP_URL and NEREID_GRPC_URL, through
clients/python/run-tests.sh with NEREID_PYTHON_TESTS=clients/python/onnx. Every test runs over
HTTP with binary tensors, HTTP with JSON tensors, and gRPC.
"""

import os

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

TRANSPORTS = ("http-binary", "http-json", "grpc")


def _url(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: this module runs against a server started for it")
    return value.removeprefix("http://")


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    if request.param == "grpc":
        client = grpcclient.InferenceServerClient(_url("NEREID_GRPC_URL"))
        return request.param, grpcclient, client, True
    client = httpclient.InferenceServerClient(_url("NEREID_HTTP_URL"))
    return request.param, httpclient, client, request.param == "http-binary"


def _input(transport, name, array, datatype):
    kind, mod, _, binary = transport
    inp = mod.InferInput(name, list(array.shape), datatype)
    if kind == "grpc":
        inp.set_data_from_numpy(array)
    else:
        inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def _output(transport, name, class_count=0):
    kind, mod, _, binary = transport
    if kind == "grpc":
        return mod.InferRequestedOutput(name, class_count=class_count)
    return mod.InferRequestedOutput(name, binary_data=binary, class_count=class_count)


def test_config_is_completed_from_the_graph(transport):
    kind, _, client, _ = transport
    if kind == "grpc":
        config = client.get_model_config("double", as_json=True)["config"]
        assert int(config["max_batch_size"]) == 4
        assert [int(d) for d in config["input"][0]["dims"]] == [3]
    else:
        config = client.get_model_config("double")
        assert config["max_batch_size"] == 4
        assert config["input"][0]["dims"] == [3]
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["name"] == "X"
    assert config["input"][0]["data_type"] == "TYPE_FP32"


def test_double(transport):
    _, _, client, _ = transport
    x = np.array([[1.5, -2.0, 3.25], [0.0, 10.0, -0.5]], dtype=np.float32)
    result = client.infer("double", [_input(transport, "X", x, "FP32")],
                          outputs=[_output(transport, "Y")])
    np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)


NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "BF16": ml_dtypes.bfloat16, "FP32": np.float32,
    "FP64": np.float64,
}


def test_every_datatype_comes_back_as_sent(transport):
    kind, mod, client, binary = transport
    inputs, outputs, sent = [], [], {}
    for wire, dtype in NUMPY_TYPES.items():
        values = np.arange(4).reshape(2, 2)
        array = (values % 2 == 1) if wire == "BOOL" else values.astype(dtype)
        sent[wire] = array
        inp = mod.InferInput(f"IN_{wire}", [2, 2], wire)
        if kind == "grpc":
            inp.set_data_from_numpy(array)
        else:
            # JSON has no half-precision numbers: those two travel as binary data in any case.
            inp.set_data_from_numpy(array, binary_data=binary or wire in ("FP16", "BF16"))
        inputs.append(inp)
        outputs.append(_output(transport, f"OUT_{wire}"))
    strings = np.array([[b"a", b"bc"], [b"", b"\xc3\xa9"]], dtype=np.object_)
    inputs.append(_input(transport, "IN_BYTES", strings, "BYTES"))
    outputs.append(_output(transport, "OUT_BYTES"))
    result = client.infer("types", inputs, outputs=outputs)
    for wire, array in sent.items():
        np.testing.assert_array_equal(
            result.as_numpy(f"OUT_{wire}").astype(np.float64 if wire == "BF16" else array.dtype),
            array.astype(np.float64) if wire == "BF16" else array,
            err_msg=wire,
        )
    got = [v if isinstance(v, bytes) else str(v).encode() for v in result.as_numpy("OUT_BYTES").flatten()]
    assert got == list(strings.flatten())


def test_strings_through_an_onnx_operator(transport):
    _, _, client, _ = transport
    text = np.array([b"Hello", b"WORLD", b"Nereid"], dtype=np.object_)
    result = client.infer("lower", [_input(transport, "TEXT", text, "BYTES")],
                          outputs=[_output(transport, "LOWER")])
    got = [v if isinstance(v, bytes) else str(v).encode() for v in result.as_numpy("LOWER")]
    assert got == [b"hello", b"world", b"nereid"]


def test_classification_of_an_onnx_ml_model(transport):
    _, _, client, _ = transport
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    result = client.infer("linear_classifier", [_input(transport, "X", x, "FP32")],
                          outputs=[_output(transport, "LABEL"), _output(transport, "SCORES", class_count=1)])
    assert list(result.as_numpy("LABEL")) == [0, 2]
    top = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("SCORES").flatten()]
    assert [t.split(":")[1] for t in top] == ["0", "2"], top


def test_sequences_keep_a_running_sum(transport):
    """tritonclient's sequence arguments drive the sequence batcher: each transport gets its
    own correlation id (an integer on HTTP, a string on gRPC), and the implicit state carries the
    sum from one request to the next."""
    kind, _, client, _ = transport
    sequence_id = {"http-binary": 101, "http-json": 102, "grpc": "seq-grpc"}[kind]
    sums = []
    for i, value in enumerate([1.5, 2.0, 4.0]):
        result = client.infer(
            "accumulate",
            [_input(transport, "INPUT", np.array([[value]], np.float32), "FP32")],
            outputs=[_output(transport, "OUTPUT")],
            sequence_id=sequence_id,
            sequence_start=(i == 0),
            sequence_end=(i == 2),
        )
        sums.append(float(result.as_numpy("OUTPUT")[0][0]))
    assert sums == [1.5, 3.5, 7.5]
    # The sequence ended: another request without START is refused.
    with pytest.raises(Exception, match="must specify the START flag"):
        client.infer(
            "accumulate",
            [_input(transport, "INPUT", np.array([[1.0]], np.float32), "FP32")],
            sequence_id=sequence_id,
        )
