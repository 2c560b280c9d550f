"""The same requests to real Triton (2.51) and to Nereid, serving the same identity models:
status codes, error texts, response bodies and gRPC codes must agree, except for the
differences listed in KNOWN_DIFFERENCES (each with its reason; the README's compatibility section
tabulates them). A listed case that stops differing fails too, so the list stays true.
"""

import json
import struct
import urllib.error
import urllib.request

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

SIXTEEN = list(range(16))


def fp32(name="INPUT0", shape=(1, 16), data=None, **extra):
    tensor = {"name": name, "datatype": "FP32", "shape": list(shape)}
    if data is not None:
        tensor["data"] = data
    tensor.update(extra)
    return tensor


def body(*inputs, **rest):
    return json.dumps({"inputs": list(inputs), **rest}).encode()


def binary_body(header: dict, *tensors: bytes):
    text = json.dumps(header).encode()
    return text + b"".join(tensors), {"Inference-Header-Content-Length": str(len(text))}


BIN_HEADER, BIN_HEADERS = binary_body(
    {"inputs": [fp32(parameters={"binary_data_size": 64})],
     "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]},
    struct.pack("<16f", *SIXTEEN),
)
SHORT_BIN, SHORT_BIN_HEADERS = binary_body(
    {"inputs": [fp32(parameters={"binary_data_size": 64})]}, b"\0" * 60
)
SIZE_60, SIZE_60_HEADERS = binary_body(
    {"inputs": [fp32(parameters={"binary_data_size": 60})]}, b"\0" * 60
)
LONG_BIN, LONG_BIN_HEADERS = binary_body(
    {"inputs": [fp32(parameters={"binary_data_size": 64})]}, b"\0" * 68
)
INFER = "/v2/models/identity_fp32/infer"

# name -> (method, path, body, headers)
HTTP_CASES = {
    "live": ("GET", "/v2/health/live", None, {}),
    "ready": ("GET", "/v2/health/ready", None, {}),
    "model ready": ("GET", "/v2/models/identity_fp32/ready", None, {}),
    "model version ready": ("GET", "/v2/models/identity_fp32/versions/1/ready", None, {}),
    "unknown model ready": ("GET", "/v2/models/nope/ready", None, {}),
    "metadata": ("GET", "/v2/models/identity_fp32", None, {}),
    "unknown model metadata": ("GET", "/v2/models/nope", None, {}),
    "unknown version metadata": ("GET", "/v2/models/identity_fp32/versions/7", None, {}),
    "unknown path": ("GET", "/v2/nothing/here", None, {}),
    "infer json": ("POST", INFER, body(fp32(data=SIXTEEN)), {}),
    "infer json batch 2": ("POST", INFER, body(fp32(shape=(2, 16), data=SIXTEEN * 2)), {}),
    "infer with id": ("POST", INFER, body(fp32(data=SIXTEEN), id="req-7"), {}),
    "infer requested output": (
        "POST", INFER, body(fp32(data=SIXTEEN), outputs=[{"name": "OUTPUT0"}]), {}),
    "infer binary": ("POST", INFER, BIN_HEADER, BIN_HEADERS),
    "infer bytes": (
        "POST", "/v2/models/identity_bytes/infer",
        body({"name": "INPUT0", "datatype": "BYTES", "shape": [1, 3],
              "data": ["a", "", "héllo"]}), {}),
    "malformed json": ("POST", INFER, b'{"inputs": [', {}),
    "empty body": ("POST", INFER, b"", {}),
    "unknown model infer": ("POST", "/v2/models/nope/infer", body(fp32(data=SIXTEEN)), {}),
    "wrong datatype": (
        "POST", INFER, body({"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                             "data": SIXTEEN}), {}),
    "unknown datatype": (
        "POST", INFER, body({"name": "INPUT0", "datatype": "FP99", "shape": [1, 16],
                             "data": SIXTEEN}), {}),
    "wrong shape": ("POST", INFER, body(fp32(shape=(1, 15), data=SIXTEEN[:15])), {}),
    "batch too large": ("POST", INFER, body(fp32(shape=(9, 16), data=SIXTEEN * 9)), {}),
    "unknown input": ("POST", INFER, body(fp32(name="NOPE", data=SIXTEEN)), {}),
    "missing input": ("POST", INFER, body(), {}),
    "data shorter than shape": ("POST", INFER, body(fp32(data=SIXTEEN[:15])), {}),
    "data longer than shape": ("POST", INFER, body(fp32(data=SIXTEEN + [1])), {}),
    "unknown output": (
        "POST", INFER, body(fp32(data=SIXTEEN), outputs=[{"name": "NOPE"}]), {}),
    "duplicate output": (
        "POST", INFER,
        body(fp32(data=SIXTEEN), outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]), {}),
    "triton_ parameter": ("POST", INFER, body(fp32(data=SIXTEEN), parameters={"triton_x": 1}), {}),
    "no data field": ("POST", INFER, body(fp32()), {}),
    "fp16 as json": (
        "POST", INFER, body({"name": "INPUT0", "datatype": "FP16", "shape": [1, 16],
                             "data": SIXTEEN}), {}),
    "negative dimension": ("POST", INFER, body(fp32(shape=(-1, 16), data=SIXTEEN)), {}),
    "binary too short": ("POST", INFER, SHORT_BIN, SHORT_BIN_HEADERS),
    "binary too long": ("POST", INFER, LONG_BIN, LONG_BIN_HEADERS),
    "binary size not the shape's": ("POST", INFER, SIZE_60, SIZE_60_HEADERS),
    "bytes count short": (
        "POST", "/v2/models/identity_bytes/infer",
        *binary_body({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 3],
                                  "parameters": {"binary_data_size": 10}}]},
                     b"\1\0\0\0a\1\0\0\0b")),
    "header length not a number": (
        "POST", INFER, body(fp32(data=SIXTEEN)), {"Inference-Header-Content-Length": "x"}),
    "header length beyond body": (
        "POST", INFER, body(fp32(data=SIXTEEN)), {"Inference-Header-Content-Length": "100000"}),
    "infer by GET": ("GET", INFER, None, {}),
    "repository index": ("POST", "/v2/repository/index", b"{}", {}),
    "load without explicit mode": ("POST", "/v2/repository/models/identity_fp32/load", b"", {}),
    "shared memory status": ("GET", "/v2/systemsharedmemory/status", None, {}),
    "unknown shared memory region": (
        "GET", "/v2/systemsharedmemory/region/nope/status", None, {}),
    "register without key": (
        "POST", "/v2/systemsharedmemory/region/r/register", b'{"byte_size": 8}', {}),
    "logging settings": ("GET", "/v2/logging", None, {}),
    "trace settings": ("GET", "/v2/trace/setting", None, {}),
    "model trace settings": ("GET", "/v2/models/identity_fp32/trace/setting", None, {}),
    "trace file over the network": (
        "POST", "/v2/trace/setting", b'{"trace_file": "/tmp/x.json"}', {}),
}

# Cases where Nereid answers differently on purpose (or where Triton 2.51 has a bug): the
# reason is printed with the case. Keep README.md's compatibility table in step.
KNOWN_DIFFERENCES = {
    "metadata": "the platform names the backend: Triton says \"python\" (the Python backend "
                "serves its identity), Nereid \"identity\"",
    "logging settings": "Nereid's log lines always go to stderr with ISO 8601 timestamps, so it "
                        "reports log_format \"ISO8601\" (Triton's default is \"default\")",
    "data shorter than shape": "Triton 2.51 answers 500 with the text for longer data; newer "
                               "Triton (its qa tests) answers 400 \"Failed to parse 'data' field: "
                               "shape does not match true shape\", as Nereid does",
    "data longer than shape": "Triton 2.51 answers 500; newer Triton answers 400 with the same "
                              "text, as Nereid does",
    "duplicate output": "Triton 2.51 accepts a duplicated requested output; newer Triton refuses "
                        "it with \"output 'X' already exists in request\", as Nereid does",
    "empty body": "Triton 2.51 takes an empty body for a raw tensor; Nereid reads a body as JSON "
                  "unless Inference-Header-Content-Length says otherwise, and says the JSON is "
                  "empty",
    "header length not a number": "Triton 2.51 falls back to a raw tensor; Nereid refuses the "
                                  "header: \"Unable to parse Inference-Header-Content-Length, "
                                  "got: x\"",
    "malformed json": "Triton 2.51 answers 500 with RapidJSON's message; Nereid answers 400 "
                      "with serde_json's (both start \"failed to parse the request JSON "
                      "buffer: \")",
}


def call(server, method, path, data, headers):
    request = urllib.request.Request(
        f"http://{server.http}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def comparable(raw: bytes, headers: dict):
    """The body as something to compare: parsed JSON (a binary-framed body's JSON part and its
    binary tail), or the bytes."""
    length = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    if length is not None:
        n = int(length)
        return json.loads(raw[:n]), raw[n:]
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def outcome(server, case):
    method, path, data, headers = HTTP_CASES[case]
    status, raw, response_headers = call(server, method, path, data, headers)
    return status, comparable(raw, response_headers)


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_http_answers_match_triton(case, triton, nereid):
    theirs = outcome(triton, case)
    ours = outcome(nereid, case)
    if case in KNOWN_DIFFERENCES:
        assert ours != theirs, (
            f"'{case}' is listed as a known difference but now matches Triton: remove it from "
            f"KNOWN_DIFFERENCES and README.md"
        )
        print(f"{case}: known difference ({KNOWN_DIFFERENCES[case]}): "
              f"Triton {theirs!r}, Nereid {ours!r}")
        return
    assert ours == theirs, f"{case}: Triton answered {theirs!r}, Nereid {ours!r}"


def grpc_request(**fields):
    request = service_pb2.ModelInferRequest(model_name=fields.pop("model", "identity_fp32"))
    tensor = request.inputs.add()
    tensor.name = fields.pop("name", "INPUT0")
    tensor.datatype = fields.pop("datatype", "FP32")
    tensor.shape.extend(fields.pop("shape", [1, 16]))
    raw = fields.pop("raw", struct.pack("<16f", *SIXTEEN))
    if raw is not None:
        request.raw_input_contents.append(raw)
    for key, value in fields.pop("parameters", {}).items():
        request.parameters[key].int64_param = value
    assert not fields, fields
    return request


GRPC_CASES = {
    "good": grpc_request(),
    "unknown model": grpc_request(model="nope"),
    "unknown input": grpc_request(name="NOPE"),
    "wrong datatype": grpc_request(datatype="INT32"),
    "raw contents too short": grpc_request(raw=b"\0" * 60),
    "raw contents too long": grpc_request(raw=b"\0" * 68),
    "no data": grpc_request(raw=None),
    "batch too large": grpc_request(shape=[9, 16], raw=b"\0" * (9 * 64)),
    "triton_ parameter": grpc_request(parameters={"triton_x": 1}),
}


def grpc_outcome(server, case):
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelInfer(GRPC_CASES[case], timeout=30)
        except grpc.RpcError as error:
            return error.code(), error.details()
        return "OK", [o.name for o in response.outputs], list(response.raw_output_contents)


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_answers_match_triton(case, triton, nereid):
    theirs = grpc_outcome(triton, case)
    ours = grpc_outcome(nereid, case)
    assert ours == theirs, f"{case}: Triton answered {theirs!r}, Nereid {ours!r}"
