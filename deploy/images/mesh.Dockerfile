# The mesh pod and both runtime adapters (modelmesh-pod, modelmesh-mlserver-adapter, modelmesh-triton-adapter).
# Build from the repository root:  docker build -f deploy/images/mesh.Dockerfile -t modelmesh-py/mesh .
FROM python:3.11-slim-bookworm
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin mesh
WORKDIR /opt/modelmesh-py
COPY pyproject.toml README.md ./
COPY deploy/local/constraints-mesh.txt deploy/local/
COPY protos protos
COPY mesh mesh
COPY runtime_adapters runtime_adapters
# pinned: every dependency at the version the tests ran with
RUN pip install --no-cache-dir -c deploy/local/constraints-mesh.txt '.[adapters]'
USER 1000
# the pod's ports: external gRPC, internal gRPC, REST, internal REST, metrics
EXPOSE 8033 8034 8008 8035 2112
CMD ["modelmesh-pod"]
