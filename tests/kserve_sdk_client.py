"""The KServe Python SDK against one endpoint, run in its own environment (.venv-kserve).

The SDK pins packages the mesh's environment cannot share (psutil < 6), so tests/test_kserve_sdk.py runs
this script with .venv-kserve's Python and reads what it prints: one JSON object of what the SDK's
clients saw. It imports nothing of this project.

    kserve_sdk_client.py '{"grpc": "127.0.0.1:8033", "rest": "http://127.0.0.1:8008", "model": "m",
                           "input": {"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
                           "output": "OUTPUT0"}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import grpc
import httpx
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

UNKNOWN = "no-such-model"


async def attempt(call: Awaitable[Any]) -> Any:
    """What a call returned, or the error the SDK raised (Triton's own health answers are not what the SDK
    parses: the comparison with direct calls needs every call's outcome, not the first failure)."""
    try:
        return await call
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    except httpx.HTTPStatusError as e:
        return {"status": e.response.status_code, "message": str(e)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def request(spec: dict[str, Any], model: str) -> InferRequest:
    tensor = spec["input"]
    infer_input = InferInput(tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"])
    return InferRequest(model_name=model, infer_inputs=[infer_input])


async def infer(answer: Awaitable[Any], output: str) -> dict[str, Any]:
    response = await answer
    return {
        "model_name": response.model_name,
        "data": response.get_output_by_name(output).as_numpy().ravel().tolist(),
    }


async def over_grpc(spec: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    client = InferenceGRPCClient(spec["grpc"], timeout=60)
    try:
        seen["server_live"] = await attempt(client.is_server_live())
        seen["server_ready"] = await attempt(client.is_server_ready())
        seen["model_ready"] = await attempt(client.is_model_ready(spec["model"]))
        seen["infer"] = await attempt(infer(client.infer(request(spec, spec["model"])), spec["output"]))
        seen["unknown_infer"] = await attempt(infer(client.infer(request(spec, UNKNOWN)), spec["output"]))
    finally:
        await client.close()
    async with grpc.aio.insecure_channel(spec["grpc"]) as channel:  # the SDK's own stub: no client wraps it
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=spec["model"]), timeout=60)
        seen["metadata"] = {
            "name": metadata.name,
            "platform": metadata.platform,
            "inputs": [i.name for i in metadata.inputs],
            "outputs": [o.name for o in metadata.outputs],
        }
    return seen


async def over_rest(spec: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=60))
    base = spec["rest"]
    try:
        seen["server_live"] = await attempt(client.is_server_live(base))
        seen["server_ready"] = await attempt(client.is_server_ready(base))
        seen["model_ready"] = await attempt(client.is_model_ready(base, spec["model"]))
        seen["unknown_model_ready"] = await attempt(client.is_model_ready(base, UNKNOWN))
        answer = client.infer(base, request(spec, spec["model"]), model_name=spec["model"])
        seen["infer"] = await attempt(infer(answer, spec["output"]))
        unknown = client.infer(base, request(spec, UNKNOWN), model_name=UNKNOWN)
        seen["unknown_infer"] = await attempt(infer(unknown, spec["output"]))
    finally:
        await client.close()
    return seen


async def main(spec: dict[str, Any]) -> None:
    print(json.dumps({"grpc": await over_grpc(spec), "rest": await over_rest(spec)}))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
