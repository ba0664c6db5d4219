"""Streams end to end: a slow reader holds the runtime back, deadlines and cancellation reach the runtime.

Real processes: etcd, two echo runtimes, pod a (holds the models) and pod b (forwards to a), on each front.
The echo runtime answers a stream request many times and counts the answers grpc has taken from it, so
"the runtime was held back" is a count, not a timing: with a client that has read 5 answers of 512 KiB,
a mesh that buffered the stream would let the runtime send all 480 (240 MiB) or close the client; one with
flow control end to end lets it run ahead only by what the windows of its hops hold.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE, STATS_METHOD, STREAM_METHOD
from load_tests.processes import EchoProcess, start_echo_pod
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

ANSWERS = 480
ANSWER_BYTES = 512 * 1024  # 240 MiB in all
READ_FIRST = 5
# What the hops may hold between the runtime and a reader that stopped: grpc's windows on each connection
# (runtime to pod, pod to pod, worker to main process, pod to client: about 5 MiB each once BDP probing
# has grown them; 9-11 answers ahead with a client reading the runtime directly) and the HTTP/2 front's
# 1 MiB per stream. Measured 18-127 answers ahead through the mesh (most through a forwarding pod with
# serving processes: five hops); the bound is a third of the stream, and the pod holds under 64 MiB of it.
MAX_AHEAD = ANSWERS // 3
MAX_RSS_GROWTH = 64 << 20
FRONTS = {
    "h2": ["--front=h2"],
    "grpc": ["--front=grpc"],
    "grpc-workers": ["--front=grpc", "--serving-processes=2"],
}


@dataclass
class TwoPods:
    holder: PodProcess
    forwarder: PodProcess
    echo_holder: EchoProcess
    echo_forwarder: EchoProcess

    def pod(self, through: str) -> PodProcess:
        return self.holder if through == "holder" else self.forwarder


def echo_stats(echo: EchoProcess) -> dict[str, object]:
    with grpc.insecure_channel(echo.address) as channel:
        stats: dict[str, object] = json.loads(channel.unary_unary(STATS_METHOD)(b"", timeout=10))
        return stats


def streamed(echo: EchoProcess, model: str) -> int:
    counts = echo_stats(echo)["streamed"]
    assert isinstance(counts, dict)
    return int(counts.get(model, 0))


def cancelled(echo: EchoProcess, model: str) -> int:
    counts = echo_stats(echo)["streams_cancelled"]
    assert isinstance(counts, dict)
    return int(counts.get(model, 0))


def pod_rss(pod: PodProcess) -> int:
    """The pod's memory: its main process and its serving processes."""
    main = psutil.Process(pod.process.pid)
    return sum(p.memory_info().rss for p in [main, *main.children(recursive=True)])


def request(model: str) -> bytes:
    return v2.ModelInferRequest(model_name=model).SerializeToString()


class OpenStream:
    """A ModelStreamInfer call whose requests are sent when asked, and whose answers are read when asked."""

    def __init__(self, channel: grpc.Channel, model: str, timeout_s: float = 120.0) -> None:
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self.call = channel.stream_stream(STREAM_METHOD)(
            iter(self._requests.get, None), metadata=[("mm-model-id", model)], timeout=timeout_s
        )

    def send(self, message: bytes) -> None:
        self._requests.put(message)

    def close(self) -> None:
        self._requests.put(None)

    def read(self) -> v2.ModelStreamInferResponse:
        return v2.ModelStreamInferResponse.FromString(next(self.call))


def channel_to(pod: PodProcess) -> grpc.Channel:
    return grpc.insecure_channel(pod.address, options=[("grpc.max_receive_message_length", 8 << 20)])


@pytest.fixture(scope="module", params=list(FRONTS))
def pods(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPods]:
    work: Path = tmp_path_factory.mktemp(f"stream-flow-{request.param}")
    etcd = EtcdServer.start(work / "etcd")
    started: list[PodProcess] = []
    echoes: list[EchoProcess] = []
    try:
        for name in ("echo-a", "echo-b"):
            echoes.append(EchoProcess.start(work / name, name))
        holder = start_echo_pod(work / "pod-a", etcd, echoes[0], "pod-a", extra_args=FRONTS[request.param])
        started.append(holder)
        with grpc.insecure_channel(holder.address) as channel:  # pod a alone: it loads every model
            stub = mm_grpc.ModelMeshStub(channel)
            for model_id, path in (
                ("big", f"size=1000;answers={ANSWERS};answer_bytes={ANSWER_BYTES}"),
                ("slow", "size=1000;answers=1000;infer_ms=50"),
                ("small", "size=1000"),
            ):
                info = mm.ModelInfo(type=MODEL_TYPE, path=path)
                registration = mm.RegisterModelRequest(
                    modelId=model_id, modelInfo=info, loadNow=True, sync=True
                )
                stub.registerModel(registration, timeout=30)
        forwarder = start_echo_pod(work / "pod-b", etcd, echoes[1], "pod-b", extra_args=FRONTS[request.param])
        started.append(forwarder)
        two = TwoPods(holder, forwarder, *echoes)
        with grpc.insecure_channel(forwarder.address) as channel:  # pod b sees a's copies before a test
            stub = mm_grpc.ModelMeshStub(channel)
            for model_id in ("big", "slow", "small"):
                poll_until(
                    lambda m=model_id: (
                        stub.getModelStatus(mm.GetStatusRequest(modelId=m), timeout=10).status
                        == mm.ModelStatusInfo.LOADED
                    ),
                    timeout_s=30,
                    what=f"pod b seeing {model_id} loaded",
                )
        yield two
    finally:
        for pod in started:
            pod.process.stop()
        for echo in echoes:
            echo.stop()
        etcd.process.stop()


@pytest.mark.parametrize("through", ["holder", "forwarder"])
def test_a_slow_reader_holds_the_runtime_back_and_others_are_served(pods: TwoPods, through: str) -> None:
    pod = pods.pod(through)
    before = streamed(pods.echo_holder, "big")
    rss_before = pod_rss(pod)
    with channel_to(pod) as channel, channel_to(pod) as other_client:
        stream = OpenStream(channel, "big")
        stream.send(request("big"))
        first = [stream.read() for _ in range(READ_FIRST)]

        steady: list[int] = []

        def runtime_stopped() -> bool:  # no more answers taken from the runtime for a second
            steady.append(streamed(pods.echo_holder, "big") - before)
            return len(steady) >= 5 and steady[-1] == steady[-5]

        poll_until(runtime_stopped, timeout_s=30, what="the runtime waiting for the reader", interval_s=0.25)
        ahead = steady[-1] - READ_FIRST
        rss_growth = pod_rss(pod) - rss_before
        # another client of the same pod is served while the stream waits
        answer = other_client.unary_unary(INFER_METHOD)(
            request("small"), metadata=[("mm-model-id", "small")], timeout=10
        )
        assert v2.ModelInferResponse.FromString(answer).model_name == "small"

        rest = [stream.read() for _ in range(ANSWERS - READ_FIRST)]
        stream.close()
        with pytest.raises(StopIteration):
            stream.read()
    assert ahead <= MAX_AHEAD, f"the runtime ran {ahead} answers ahead of a reader that stopped"
    assert rss_growth < MAX_RSS_GROWTH, f"the pod grew {rss_growth >> 20} MiB holding a stalled stream"
    answers = first + rest
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(ANSWERS)]
    assert all(len(a.infer_response.raw_output_contents[0]) == ANSWER_BYTES for a in answers)
    assert stream.call.code() == grpc.StatusCode.OK
    if through == "forwarder":  # it went to the holder's runtime, not a copy of its own
        assert streamed(pods.echo_forwarder, "big") == 0


@pytest.mark.parametrize("through", ["holder", "forwarder"])
def test_the_clients_deadline_reaches_the_runtime_and_ends_the_stream(pods: TwoPods, through: str) -> None:
    cancelled_before = cancelled(pods.echo_holder, "slow")
    deadlines_before = len(echo_stats(pods.echo_holder)["stream_deadlines"])  # type: ignore[arg-type]
    with channel_to(pods.pod(through)) as channel:
        stream = OpenStream(channel, "slow", timeout_s=2.0)
        stream.send(request("slow"))
        assert stream.read().infer_response.id == "0"
        with pytest.raises(grpc.RpcError) as raised:
            while True:
                stream.read()
        stream.close()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadlines = echo_stats(pods.echo_holder)["stream_deadlines"]
    assert isinstance(deadlines, list) and len(deadlines) == deadlines_before + 1
    # grpc-timeout rounds up to its unit: a few ms over the client's 2 s
    assert deadlines[-1] is not None and 0 < deadlines[-1] <= 2.1, deadlines[-1]
    poll_until(
        lambda: cancelled(pods.echo_holder, "slow") == cancelled_before + 1,
        timeout_s=10,
        what="the runtime's stream ended by the deadline",
    )


@pytest.mark.parametrize("through", ["holder", "forwarder"])
def test_a_client_cancelling_ends_the_runtimes_stream(pods: TwoPods, through: str) -> None:
    cancelled_before = cancelled(pods.echo_holder, "slow")
    with channel_to(pods.pod(through)) as channel:
        stream = OpenStream(channel, "slow")
        stream.send(request("slow"))
        assert [stream.read().infer_response.id for _ in range(3)] == ["0", "1", "2"]
        stream.call.cancel()
        poll_until(
            lambda: cancelled(pods.echo_holder, "slow") == cancelled_before + 1,
            timeout_s=10,
            what="the runtime's stream ended by the client's cancel",
        )
        stream.close()
    assert stream.call.code() == grpc.StatusCode.CANCELLED
