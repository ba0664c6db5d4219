"""mmesh.ModelRuntime adapter in front of a Triton Inference Server (python backend; ONNX via onnxruntime)."""
