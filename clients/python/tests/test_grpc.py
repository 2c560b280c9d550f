"""gRPC (inference.GRPCInferenceService) endpoints through tritonclient.grpc.

tritonclient.grpc returns protobuf messages by default; with as_json=True it
returns json.loads(MessageToJson(msg, preserving_proto_field_name=True)), in
which int64/uint64 fields are JSON *strings* (proto3 JSON mapping) and
zero/empty fields are omitted. Both forms are checked.
"""

import asyncio
import queue

import numpy as np
import pytest

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException

from helpers import (
    ALL_MODELS,
    IDENTITY_BYTES,
    IDENTITY_FP32,
    IRIS,
    REQUIRED_EXTENSIONS,
    fp32_batch,
)


def test_server_live_and_ready(grpc_client):
    assert grpc_client.is_server_live() is True
    assert grpc_client.is_server_ready() is True


def test_server_metadata(grpc_client):
    meta = grpc_client.get_server_metadata()
    assert meta.name == "nereid"
    assert meta.version
    missing = set(REQUIRED_EXTENSIONS) - set(meta.extensions)
    assert not missing, f"extensions missing: {sorted(missing)}"

    as_json = grpc_client.get_server_metadata(as_json=True)
    assert as_json["name"] == "nereid"
    assert set(REQUIRED_EXTENSIONS) <= set(as_json["extensions"])


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_ready(grpc_client, model):
    assert grpc_client.is_model_ready(model) is True


def test_unknown_model_not_ready(grpc_client):
    # Triton answers ModelReady for an unknown model with ready=false (OK status).
    assert grpc_client.is_model_ready("nope") is False


@pytest.mark.parametrize(
    "model,inp,out",
    [
        (IDENTITY_FP32, ("INPUT0", "FP32", [-1, 16]), ("OUTPUT0", "FP32", [-1, 16])),
        (IDENTITY_BYTES, ("INPUT0", "BYTES", [-1, -1]), ("OUTPUT0", "BYTES", [-1, -1])),
        (IRIS, ("INPUT", "FP32", [-1, 4]), ("PROBABILITIES", "FP32", [-1, 3])),
    ],
)
def test_model_metadata(grpc_client, model, inp, out):
    meta = grpc_client.get_model_metadata(model)
    assert meta.name == model
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [inp]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [out]

    as_json = grpc_client.get_model_metadata(model, as_json=True)
    assert as_json["name"] == model
    (jin,) = as_json["inputs"]
    assert (jin["name"], jin["datatype"]) == inp[:2]
    # int64 shape entries come back as strings from MessageToJson.
    assert [int(d) for d in jin["shape"]] == inp[2]


def test_model_metadata_unknown_model(grpc_client):
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.get_model_metadata("nope")
    assert "Request for unknown model: 'nope' is not found" in str(exc.value)


def test_model_config_protobuf(grpc_client):
    response = grpc_client.get_model_config(IDENTITY_FP32)
    cfg = response.config  # ModelConfigResponse.config: inference.ModelConfig
    assert cfg.name == IDENTITY_FP32
    assert cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == ["INPUT0"]
    assert [o.name for o in cfg.output] == ["OUTPUT0"]
    assert list(cfg.input[0].dims) == [16]
    # DataType enum: TYPE_FP32
    assert cfg.input[0].data_type == grpcclient.model_config_pb2.TYPE_FP32

    iris = grpc_client.get_model_config(IRIS).config
    assert iris.max_batch_size == 64
    assert [i.name for i in iris.input] == ["INPUT"]
    assert [o.name for o in iris.output] == ["PROBABILITIES"]


def test_model_config_as_json(grpc_client):
    # as_json=True: the whole ModelConfigResponse as a dict, config under "config".
    response = grpc_client.get_model_config(IDENTITY_FP32, as_json=True)
    assert set(response) == {"config"}
    cfg = response["config"]
    assert cfg["name"] == IDENTITY_FP32
    assert cfg["max_batch_size"] == 8  # int32: stays a JSON number
    assert [i["name"] for i in cfg["input"]] == ["INPUT0"]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert cfg["input"][0]["dims"] == ["16"]  # int64: a JSON string

    tb = grpc_client.get_model_config(IDENTITY_BYTES, as_json=True)["config"]
    assert tb["max_batch_size"] == 8
    assert tb["input"][0]["data_type"] == "TYPE_STRING"


def test_repository_index(grpc_client):
    index = grpc_client.get_model_repository_index()
    by_name = {m.name: m for m in index.models}
    for model in ALL_MODELS:
        assert model in by_name, f"{model} missing from repository index"
        assert by_name[model].state == "READY"

    as_json = grpc_client.get_model_repository_index(as_json=True)
    names = {m["name"] for m in as_json["models"]}
    assert set(ALL_MODELS) <= names


def test_infer_response_fields(grpc_client):
    x = fp32_batch(1, seed=5)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer(
        IDENTITY_FP32,
        [inp],
        request_id="req-42",
        outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
    )
    response = result.get_response()
    assert response.model_name == IDENTITY_FP32
    assert response.id == "req-42"
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUTPUT0", "FP32", [1, 16])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_infer_without_requested_outputs(grpc_client):
    x = fp32_batch(1, seed=4)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer(IDENTITY_FP32, [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_async_infer_concurrent(grpc_client):
    done = queue.Queue()
    xs = [fp32_batch(1 + i % 3, seed=300 + i) for i in range(8)]
    for i, x in enumerate(xs):
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        grpc_client.async_infer(
            IDENTITY_FP32,
            [inp],
            callback=lambda result, error, i=i: done.put((i, result, error)),
            outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
        )
    seen = set()
    for _ in xs:
        i, result, error = done.get(timeout=60)
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), xs[i])
        seen.add(i)
    assert seen == set(range(len(xs)))


def test_asyncio_client(nereid_server):
    """tritonclient.grpc.aio (grpc.aio based) against the same server."""

    async def run():
        async with aiogrpcclient.InferenceServerClient(nereid_server.grpc_url) as client:
            assert await client.is_server_live()
            assert await client.is_model_ready(IDENTITY_FP32)

            async def one(seed):
                x = fp32_batch(2, seed=seed)
                inp = aiogrpcclient.InferInput("INPUT0", [2, 16], "FP32")
                inp.set_data_from_numpy(x)
                result = await client.infer(
                    IDENTITY_FP32,
                    [inp],
                    outputs=[aiogrpcclient.InferRequestedOutput("OUTPUT0")],
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)

            await asyncio.gather(*(one(400 + i) for i in range(4)))

    asyncio.run(run())
