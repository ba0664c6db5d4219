"""Two copies of a model; one pod kept busy by slow requests: the other copy takes the new traffic.

Real processes: etcd, two echo runtimes, two mesh pods that both serve the echo type, on each front. Pod a
is the one clients call. A model, ``shared``, has a copy on each pod; slow models (each inference waits
``SLOW_MS``) have one copy, on one pod. While a's requests for a slow model are in flight on one pod, a's
new requests for ``shared`` must all go to the other copy: the in-flight book counts every request a
sends, served here or by a peer, whatever the model (mesh/routing/inflight.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE, STATS_METHOD
from load_tests.hop import infer_request
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.outcomes import COPY_HEADER, INTERNAL_MODEL_HEADER, LOAD_METHOD
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

pytestmark = pytest.mark.integration

SLOW_MS = 60_000  # far longer than the test: the slow requests are cancelled when it is done
SLOW_REQUESTS = 8
NEW_REQUESTS = 20


@dataclass
class TwoPods:
    a: PodProcess  # the pod clients call
    b: PodProcess
    echo_a: EchoProcess
    echo_b: EchoProcess


def echo_infers(echo: EchoProcess) -> dict[str, int]:
    """ModelInfer calls the echo runtime has seen, per model (counted when they arrive)."""
    with grpc.insecure_channel(echo.address) as channel:
        stats = json.loads(channel.unary_unary(STATS_METHOD)(b"", timeout=10))
    return stats["infers"]  # type: ignore[no-any-return]


def load_on(pod: PodProcess, model_id: str, extra_copy: bool) -> None:
    """A copy on exactly this pod (the pods' own internal load call, as the copy scaler uses it)."""
    metadata = [(INTERNAL_MODEL_HEADER, model_id)] + ([(COPY_HEADER, "1")] if extra_copy else [])
    with grpc.insecure_channel(pod.internal_address) as channel:
        channel.unary_unary(LOAD_METHOD)(b"", metadata=metadata, timeout=60)


@pytest.fixture(scope="module", params=["h2", "grpc"])
def pods(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPods]:
    front = request.param
    work: Path = tmp_path_factory.mktemp(f"least-busy-{front}")
    etcd = EtcdServer.start(work / "etcd")
    started: list[PodProcess] = []
    echoes: list[EchoProcess] = []
    try:
        for name in ("echo-a", "echo-b"):
            echoes.append(EchoProcess.start(work / name, name))
        for name, echo in zip(("pod-a", "pod-b"), echoes, strict=True):
            started.append(start_echo_pod(work / name, etcd, echo, name, extra_args=[f"--front={front}"]))
        a, b = started
        with grpc.insecure_channel(a.address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            for model_id, path in (
                ("shared", "size=1000"),
                ("slow-on-a", f"size=1000;infer_ms={SLOW_MS}"),
                ("slow-on-b", f"size=1000;infer_ms={SLOW_MS}"),
            ):
                info = mm.ModelInfo(type=MODEL_TYPE, path=path)
                stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)
        load_on(a, "shared", extra_copy=False)
        load_on(b, "shared", extra_copy=True)
        load_on(a, "slow-on-a", extra_copy=False)
        load_on(b, "slow-on-b", extra_copy=False)
        pods = TwoPods(a, b, *echoes)

        def both_copies_in_use() -> bool:  # pod a's view lists both copies once ties send it to each
            infer(a, "shared")
            return all(echo_infers(echo).get("shared", 0) > 0 for echo in (pods.echo_a, pods.echo_b))

        poll_until(both_copies_in_use, timeout_s=30, what="pod a routing to both copies of 'shared'")
        yield pods
    finally:
        for pod in started:
            pod.process.stop()
        for echo in echoes:
            echo.stop()
        etcd.process.stop()


def infer(pod: PodProcess, model_id: str) -> None:
    with grpc.insecure_channel(pod.address) as channel:
        channel.unary_unary(INFER_METHOD)(infer_request(model_id), timeout=30)


async def new_traffic_while_slow(pods: TwoPods, slow_model: str, slow_echo: EchoProcess) -> dict[str, int]:
    """``SLOW_REQUESTS`` for ``slow_model`` in flight through pod a, then ``NEW_REQUESTS`` for ``shared``
    one after another: how many of those each runtime answered."""
    async with grpc.aio.insecure_channel(pods.a.address) as channel:
        call = channel.unary_unary(INFER_METHOD)
        seen_before = echo_infers(slow_echo).get(slow_model, 0)
        slow = [
            asyncio.ensure_future(call(infer_request(slow_model), timeout=SLOW_MS / 1000))
            for _ in range(SLOW_REQUESTS)
        ]
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while echo_infers(slow_echo).get(slow_model, 0) < seen_before + SLOW_REQUESTS:
                assert asyncio.get_running_loop().time() < deadline, "the slow requests never arrived"
                await asyncio.sleep(0.05)
            before = {"a": echo_infers(pods.echo_a), "b": echo_infers(pods.echo_b)}
            for _ in range(NEW_REQUESTS):
                await call(infer_request("shared"), timeout=30)
            after = {"a": echo_infers(pods.echo_a), "b": echo_infers(pods.echo_b)}
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
    return {pod: after[pod].get("shared", 0) - before[pod].get("shared", 0) for pod in ("a", "b")}


async def test_a_peer_busy_with_requests_from_here_gets_no_new_traffic(pods: TwoPods) -> None:
    served = await new_traffic_while_slow(pods, "slow-on-b", pods.echo_b)
    assert served == {"a": NEW_REQUESTS, "b": 0}


async def test_this_pod_busy_with_its_own_requests_sends_new_traffic_to_the_other_copy(pods: TwoPods) -> None:
    served = await new_traffic_while_slow(pods, "slow-on-a", pods.echo_a)
    assert served == {"a": 0, "b": NEW_REQUESTS}


async def test_when_the_slow_requests_end_both_copies_serve_again(pods: TwoPods) -> None:
    """The book forgets what ended (cancelled included): ties rotate over both copies once more."""

    def book_drained() -> bool:
        before = {"a": echo_infers(pods.echo_a), "b": echo_infers(pods.echo_b)}
        for _ in range(10):
            infer(pods.a, "shared")
        after = {"a": echo_infers(pods.echo_a), "b": echo_infers(pods.echo_b)}
        return all(after[p].get("shared", 0) > before[p].get("shared", 0) for p in ("a", "b"))

    poll_until(book_drained, timeout_s=20, what="both copies serving after the slow requests ended")
