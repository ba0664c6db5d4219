"""Triton python-backend model that serves an ONNX file with onnxruntime.

The Triton adapter copies this file as ``<model>/1/model.py`` next to ``<model>/1/model.onnx``. It runs inside
the Triton runtime's environment (.venv-triton: numpy<2, onnxruntime), never in the mesh's.

Inputs and outputs missing from config.pbtxt are filled in from the ONNX graph by ``auto_complete_config``
(Triton must run without --disable-auto-complete-config). Dimensions the graph leaves symbolic become -1.
Model config parameters: ``intra_op_num_threads`` and ``inter_op_num_threads`` (default 1 each: a pod runs
many models on few cores).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"

# onnxruntime type strings -> Triton config data types.
ORT_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}


def _onnx_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), ONNX_FILE)


def _dims(shape: list[Any]) -> list[int]:
    # Symbolic ("batch") and unknown (None) dimensions are variable in Triton.
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape] or [1]


def _tensor_config(arg: Any, batched: bool) -> dict[str, Any]:
    data_type = ORT_TO_TRITON.get(arg.type)
    if data_type is None:
        raise ValueError(f"ONNX tensor {arg.name!r} has a type Triton cannot carry: {arg.type}")
    shape = list(arg.shape)
    # With max_batch_size > 0, Triton adds the batch dimension itself: the config leaves it out.
    return {"name": arg.name, "data_type": data_type, "dims": _dims(shape[1:] if batched else shape)}


def _session(threads: tuple[int, int] = (1, 1)) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads
    return ort.InferenceSession(_onnx_path(), sess_options=options, providers=["CPUExecutionProvider"])


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        session = _session()
        config = auto_complete_model_config.as_dict()
        # The ONNX graph carries its batch dimension itself unless the model's config asks for batching.
        batched = int(config.get("max_batch_size", 0)) > 0
        declared_inputs = {t["name"] for t in config.get("input", [])}
        declared_outputs = {t["name"] for t in config.get("output", [])}
        for arg in session.get_inputs():
            if arg.name not in declared_inputs:
                auto_complete_model_config.add_input(_tensor_config(arg, batched))
        for arg in session.get_outputs():
            if arg.name not in declared_outputs:
                auto_complete_model_config.add_output(_tensor_config(arg, batched))
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})

        def param(name: str, default: int) -> int:
            value = parameters.get(name, {}).get("string_value", "")
            return int(value) if value else default

        threads = (param("intra_op_num_threads", 1), param("inter_op_num_threads", 1))
        self.session = _session(threads)
        self.input_names = [arg.name for arg in self.session.get_inputs()]
        self.output_names = [arg.name for arg in self.session.get_outputs()]
        self.input_types = {arg.name: arg.type for arg in self.session.get_inputs()}

    def _feed(self, request: Any) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            array = tensor.as_numpy()
            if self.input_types[name] == "tensor(string)" and array.dtype == np.object_:
                array = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(
                    array
                )
            feed[name] = array
        return feed

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                wanted = list(request.requested_output_names()) or self.output_names
                results = self.session.run(wanted, self._feed(request))
                tensors = [
                    pb_utils.Tensor(name, result if result.dtype != np.str_ else result.astype(np.object_))
                    for name, result in zip(wanted, results, strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
