# MLServer with the runtimes the MLServer adapter loads models into (sklearn, xgboost, lightgbm).
# Build from the repository root:  docker build -f deploy/images/mlserver.Dockerfile -t modelmesh-py/mlserver .
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin mesh
COPY deploy/local/constraints-mlserver.txt /tmp/constraints-mlserver.txt
# the same installs as deploy/local/setup.sh, pinned by the same constraints
RUN pip install --no-cache-dir -c /tmp/constraints-mlserver.txt \
        mlserver mlserver-sklearn 'uvloop<0.22' xgboost-cpu lightgbm \
    && pip install --no-cache-dir --no-deps -c /tmp/constraints-mlserver.txt mlserver-xgboost mlserver-lightgbm
USER 1000
# the adapter keeps only loads in progress in this folder (a volume shared with the adapter)
CMD ["mlserver", "start", "/repository"]
