# The CPU tritonserver the local set-up uses (out of the nvidia-pytriton wheel) with its python backend and
# onnxruntime. NVIDIA's published image (nvcr.io/nvidia/tritonserver:<version>-py3) is the documented
# alternative: same command, with its own tritonserver path.
# Build from the repository root:  docker build -f deploy/images/triton.Dockerfile -t modelmesh-py/triton .
FROM python:3.11-slim-bookworm
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin mesh
WORKDIR /opt/modelmesh-py
COPY deploy/local/setup-triton.sh deploy/local/constraints-triton.txt deploy/local/
# the local set-up's own script: .venv-triton and .triton/ under /opt/modelmesh-py, pinned by its constraints
RUN deploy/local/setup-triton.sh && chown -R 1000 /opt/modelmesh-py/.triton
ENV PATH=/opt/modelmesh-py/.venv-triton/bin:$PATH
USER 1000
COPY deploy/images/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/triton-entrypoint.sh"]
CMD ["--model-repository=/models/repository", "--model-control-mode=explicit", "--strict-readiness=false"]
