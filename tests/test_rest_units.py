"""mesh/fronts/rest.py's pure pieces (what is forwarded, what comes back, the index and statistics bodies),
and the REST listener's own errors as JSON, against an in-process aiohttp app on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from harness.processes import free_port
from mesh.fronts.rest import (
    answer_text,
    empty_statistics,
    forwarded_headers,
    index_json,
    index_ready_only,
    json_errors,
    model_path,
    upstream_answer,
)
from mesh.fronts.server_limits import GuardedListener, RestLimits, content_encoded, guard_middleware
from mesh.registry.status import IndexEntry


def test_the_path_a_runtime_sees_names_the_concrete_id() -> None:
    assert model_path("m", None, "") == "/v2/models/m"
    assert model_path("a/b c", "2", "/infer") == "/v2/models/a%2Fb%20c/versions/2/infer"
    assert model_path("m", "1", "/stats") == "/v2/models/m/versions/1/stats"


def test_forwarded_headers_keep_the_body_s_and_drop_this_hop_s() -> None:
    headers = {
        "Host": "mesh:8008",
        "Content-Length": "10",
        "Content-Encoding": "gzip",
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": "7",
        "Accept-Encoding": "gzip",
        "Expect": "100-continue",
        "Connection": "keep-alive",
        "mm-model-id": "m",
        "MM-VModel-Id": "v",
        "X-Trace": "t",
    }
    assert forwarded_headers(headers) == {
        "Content-Encoding": "gzip",
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": "7",
        "Accept-Encoding": "gzip",
        "X-Trace": "t",
    }


def test_content_encoded() -> None:
    assert content_encoded({"Content-Encoding": " GZIP "})
    assert not content_encoded({"Content-Encoding": "identity"})
    assert not content_encoded({})


def upstream(status: int, body: bytes, from_peer: bool = False, **headers: str) -> web.Response:
    named = {"-".join(word.capitalize() for word in k.split("_")): v for k, v in headers.items()}
    return upstream_answer(status, named, body, from_peer)


def test_an_answer_comes_back_with_its_body_and_the_headers_that_say_what_it_is() -> None:
    answer = upstream(
        200,
        b"\x1f\x8b binary",
        content_type="application/octet-stream",
        content_encoding="gzip",
        inference_header_content_length="42",
        vary="Accept-Encoding",
        server="uvicorn",
        mm_internal_redirect="pod-b",
    )
    assert answer.body == b"\x1f\x8b binary"
    assert dict(answer.headers) == {
        "Content-Type": "application/octet-stream",
        "Content-Encoding": "gzip",
        "Inference-Header-Content-Length": "42",
        "Vary": "Accept-Encoding",
    }
    assert upstream(409, b"{}", True, mm_internal_redirect="pod-b").headers["mm-internal-redirect"] == "pod-b"


def test_an_error_that_is_not_json_becomes_json() -> None:
    answer = upstream(404, b"404: Not Found", content_type="text/plain")
    assert answer.headers["Content-Type"] == "application/json"  # exactly: what the KServe SDK looks for
    assert json.loads(answer.text) == {"error": "404: Not Found"}
    # Triton's unknown route: JSON in a text/plain answer
    answer = upstream(404, b'{"error":"Not Found"}', content_type="text/plain")
    assert json.loads(answer.text) == {"error": "Not Found"}
    assert json.loads(upstream(501, b"").text) == {"error": "HTTP 501"}
    # a peer's marker stays on a converted error; JSON and encoded errors are left as they came
    assert upstream(503, b"down", True, mm_internal_load_failed="1").headers["mm-internal-load-failed"] == "1"
    assert upstream(404, b'{"detail": "x"}', content_type="application/json").body == b'{"detail": "x"}'
    assert upstream(400, b"\x1f\x8b", content_encoding="gzip").body == b"\x1f\x8b"


def test_answer_text_never_decodes_an_encoded_body() -> None:
    assert answer_text(upstream(404, b'{"error": "no such version"}', content_type="application/json")) == (
        "no such version"
    )
    assert answer_text(upstream(500, b"\xff\xfe binary", content_type="application/octet-stream")) == (
        "\ufffd\ufffd binary"
    )
    gzipped = upstream(503, b"\x1f\x8b\x08", content_type="application/json", content_encoding="gzip")
    assert answer_text(gzipped) == "HTTP 503"


def test_empty_statistics_are_triton_s_shape() -> None:
    assert empty_statistics("m", "") == {
        "model_stats": [
            {
                "name": "m",
                "version": "",
                "last_inference": 0,
                "inference_count": 0,
                "execution_count": 0,
                "inference_stats": {},
                "batch_stats": [],
            }
        ]
    }


def test_the_index_as_triton_lists_it() -> None:
    entries = [IndexEntry("a", "READY"), IndexEntry("b", "UNAVAILABLE", "not loaded")]
    assert index_json(entries) == [
        {"name": "a", "version": "", "state": "READY", "reason": ""},
        {"name": "b", "version": "", "state": "UNAVAILABLE", "reason": "not loaded"},
    ]


@pytest.mark.parametrize(
    ("body", "ready"), [(b"", False), (b"  ", False), (b"{}", False), (b'{"ready": true}', True)]
)
def test_index_request_bodies(body: bytes, ready: bool) -> None:
    assert index_ready_only(body) is ready


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"{", "not valid JSON"), (b"[]", "not a JSON object"), (b'{"ready": 1}', "true or false")],
)
def test_bad_index_request_bodies(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        index_ready_only(body)


# -- the listener's own errors ------------------------------------------------------------------------------


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def fine(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def listener() -> AsyncIterator[str]:
    """An app with the gateway's middlewares behind GuardedListener, on a free loopback port."""
    limits = RestLimits()
    app = web.Application(middlewares=[json_errors, guard_middleware(limits.max_header_list_bytes)])
    app.add_routes([web.get("/crash", crash), web.post("/fine", fine)])
    runner = web.AppRunner(app, **limits.handler_args())
    await runner.setup()
    guarded = GuardedListener(runner, limits)
    port = free_port()
    await guarded.start("127.0.0.1", port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        guarded.close()
        await runner.cleanup()


async def get_json(url: str, method: str = "GET") -> tuple[int, str, dict[str, str], object]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as reply:
        return reply.status, reply.headers["Content-Type"], dict(reply.headers), await reply.json()


async def test_aiohttp_s_own_errors_are_json(listener: str) -> None:
    status, kind, _, body = await get_json(f"http://{listener}/nowhere")
    assert (status, kind, body) == (404, "application/json", {"error": "Not Found: GET /nowhere"})
    status, kind, headers, body = await get_json(f"http://{listener}/fine")
    assert (status, kind, body) == (405, "application/json", {"error": "Method Not Allowed: GET /fine"})
    assert headers["Allow"] == "POST"
    status, kind, _, body = await get_json(f"http://{listener}/crash")
    assert (status, kind, body) == (500, "application/json", {"error": "Internal Server Error"})


async def test_a_request_the_parser_refuses_is_json(listener: str) -> None:
    host, port = listener.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /fine HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)  # the answer, then the close
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400" and b"Content-Type: application/json\r\n" in head  # as HTTP/1.0
    assert "Invalid header token" in json.loads(body)["error"]
