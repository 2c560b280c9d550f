"""HTTP/REST (KServe v2) endpoints through tritonclient.http.

Here the results are the JSON dicts that tritonclient.http hands back, so the
tests also pin down the exact JSON shapes Triton produces.
"""

import asyncio

import numpy as np
import pytest

import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from helpers import (
    ALL_MODELS,
    IDENTITY_BYTES,
    IDENTITY_FP32,
    IRIS,
    REQUIRED_EXTENSIONS,
    fp32_batch,
)


def test_server_live_and_ready(http_client):
    assert http_client.is_server_live() is True
    assert http_client.is_server_ready() is True


def test_server_metadata(http_client):
    meta = http_client.get_server_metadata()
    assert isinstance(meta, dict)
    assert meta["name"] == "nereid"
    assert isinstance(meta["version"], str) and meta["version"]
    assert isinstance(meta["extensions"], list)
    missing = set(REQUIRED_EXTENSIONS) - set(meta["extensions"])
    assert not missing, f"extensions missing: {sorted(missing)}"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_ready(http_client, model):
    assert http_client.is_model_ready(model) is True


def test_unknown_model_not_ready(http_client):
    assert http_client.is_model_ready("nope") is False


def _tensors(entries):
    # Triton sends exactly name/datatype/shape; ignore any extra keys.
    return [(t["name"], t["datatype"], t["shape"]) for t in entries]


def test_model_metadata_identity_fp32(http_client):
    meta = http_client.get_model_metadata(IDENTITY_FP32)
    assert meta["name"] == IDENTITY_FP32
    assert _tensors(meta["inputs"]) == [("INPUT0", "FP32", [-1, 16])]
    assert _tensors(meta["outputs"]) == [("OUTPUT0", "FP32", [-1, 16])]


def test_model_metadata_identity_bytes(http_client):
    meta = http_client.get_model_metadata(IDENTITY_BYTES)
    assert meta["name"] == IDENTITY_BYTES
    assert _tensors(meta["inputs"]) == [("INPUT0", "BYTES", [-1, -1])]
    assert _tensors(meta["outputs"]) == [("OUTPUT0", "BYTES", [-1, -1])]


def test_model_metadata_iris(http_client):
    meta = http_client.get_model_metadata(IRIS)
    assert meta["name"] == IRIS
    assert _tensors(meta["inputs"]) == [("INPUT", "FP32", [-1, 4])]
    assert _tensors(meta["outputs"]) == [("PROBABILITIES", "FP32", [-1, 3])]


def test_model_metadata_unknown_model(http_client):
    with pytest.raises(InferenceServerException) as exc:
        http_client.get_model_metadata("nope")
    assert "Request for unknown model: 'nope' is not found" in str(exc.value)


def test_model_config(http_client):
    # HTTP returns the model configuration itself (no "config" wrapper).
    cfg = http_client.get_model_config(IDENTITY_FP32)
    assert isinstance(cfg, dict)
    assert cfg["name"] == IDENTITY_FP32
    assert cfg["max_batch_size"] == 8
    assert [i["name"] for i in cfg["input"]] == ["INPUT0"]
    assert [o["name"] for o in cfg["output"]] == ["OUTPUT0"]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"
    # Triton prints int64 dims as JSON numbers over HTTP; accept strings too.
    assert [int(d) for d in cfg["input"][0]["dims"]] == [16]

    iris = http_client.get_model_config(IRIS)
    assert iris["max_batch_size"] == 64
    assert [i["name"] for i in iris["input"]] == ["INPUT"]
    assert [o["name"] for o in iris["output"]] == ["PROBABILITIES"]

    tb = http_client.get_model_config(IDENTITY_BYTES)
    assert tb["max_batch_size"] == 8
    assert tb["input"][0]["data_type"] == "TYPE_STRING"


def test_repository_index(http_client):
    # POST v2/repository/index with an empty body; the answer is a JSON list.
    index = http_client.get_model_repository_index()
    assert isinstance(index, list)
    by_name = {entry["name"]: entry for entry in index}
    for model in ALL_MODELS:
        assert model in by_name, f"{model} missing from repository index {index}"
        assert by_name[model].get("state") == "READY"


@pytest.mark.parametrize(
    "input_binary,output_binary",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["bin-in-bin-out", "bin-in-json-out", "json-in-bin-out", "json-in-json-out"],
)
def test_infer_mixed_binary_and_json(http_client, input_binary, output_binary):
    x = fp32_batch(2, seed=3)
    inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=input_binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=output_binary)
    result = http_client.infer(IDENTITY_FP32, [inp], outputs=[out])
    y = result.as_numpy("OUTPUT0")
    assert y.dtype == np.float32
    assert y.shape == (2, 16)
    np.testing.assert_array_equal(y, x)
    output = result.get_output("OUTPUT0")
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, 16]
    if output_binary:
        assert output["parameters"]["binary_data_size"] == x.nbytes
    else:
        assert "data" in output


def test_infer_without_requested_outputs(http_client):
    # No "outputs" in the request: tritonclient then asks for all outputs in
    # binary form via the request parameter binary_data_output=true.
    x = fp32_batch(1, seed=4)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = http_client.infer(IDENTITY_FP32, [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    assert result.get_output("OUTPUT0")["parameters"]["binary_data_size"] == x.nbytes


def test_infer_response_fields(http_client):
    x = fp32_batch(1, seed=5)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = http_client.infer(
        IDENTITY_FP32,
        [inp],
        request_id="req-42",
        outputs=[httpclient.InferRequestedOutput("OUTPUT0")],
    )
    response = result.get_response()
    assert response["model_name"] == IDENTITY_FP32
    assert response["id"] == "req-42"
    assert isinstance(response.get("model_version"), str)


def test_async_infer_concurrent(http_client):
    # The session client has concurrency=4: these run in parallel greenlets.
    xs = [fp32_batch(1 + i % 3, seed=100 + i) for i in range(8)]
    pending = []
    for x in xs:
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pending.append(
            http_client.async_infer(
                IDENTITY_FP32,
                [inp],
                outputs=[httpclient.InferRequestedOutput("OUTPUT0")],
            )
        )
    for x, req in zip(xs, pending):
        result = req.get_result(timeout=60)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_asyncio_client(nereid_server):
    """tritonclient.http.aio (aiohttp based) against the same server."""

    async def run():
        async with aiohttpclient.InferenceServerClient(nereid_server.http_url) as client:
            assert await client.is_server_live()
            assert await client.is_model_ready(IDENTITY_FP32)
            meta = await client.get_server_metadata()
            assert meta["name"] == "nereid"

            async def one(seed):
                x = fp32_batch(2, seed=seed)
                inp = aiohttpclient.InferInput("INPUT0", [2, 16], "FP32")
                inp.set_data_from_numpy(x)
                result = await client.infer(
                    IDENTITY_FP32,
                    [inp],
                    outputs=[aiohttpclient.InferRequestedOutput("OUTPUT0")],
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)

            await asyncio.gather(*(one(200 + i) for i in range(4)))

    asyncio.run(run())
