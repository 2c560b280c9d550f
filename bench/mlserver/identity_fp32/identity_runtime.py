"""MLServer custom runtime with the contract of Nereid's `identity_fp32`: INPUT0 FP32 [-1, 16]
is returned unchanged as OUTPUT0. Used by bench/peer.sh as the peer server; it does no work
beyond what MLServer itself does per request, like Nereid's identity backend."""

from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class IdentityRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].name != "INPUT0":
            raise MLServerError("expected exactly one input, INPUT0", status_code=400)
        tensor = payload.inputs[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                ResponseOutput(
                    name="OUTPUT0",
                    shape=tensor.shape,
                    datatype=tensor.datatype,
                    data=tensor.data,
                )
            ],
        )
