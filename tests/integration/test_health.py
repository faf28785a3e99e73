"""The health endpoint's HTTP answers, over a real loopback socket."""

from __future__ import annotations

import asyncio

from mirror.health import HealthServer, Metrics


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_health_server_answers_probes_and_metrics() -> None:
    ready = {"ok": False}
    server = HealthServer(
        "127.0.0.1",
        0,
        Metrics(),
        alive=lambda: (True, "ok"),
        ready=lambda: (ready["ok"], "waiting for a first good run of:\njob-a"),
    )
    await server.start()
    try:
        alive = await _http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        not_ready = await _http(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        ready["ok"] = True
        now_ready = await _http(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        metrics = await _http(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        missing = await _http(server.port, b"GET /nope HTTP/1.1\r\n\r\n")
        post = await _http(server.port, b"POST /healthz HTTP/1.1\r\n\r\n")
        garbage = await _http(server.port, b"\x00\x01\r\n\r\n")
    finally:
        await server.stop()
    assert alive.startswith(b"HTTP/1.1 200") and alive.endswith(b"ok\n")
    assert not_ready.startswith(b"HTTP/1.1 503") and b"job-a" in not_ready
    assert now_ready.startswith(b"HTTP/1.1 200")
    assert (
        metrics.startswith(b"HTTP/1.1 200") and b"# TYPE mirror_job_runs_total counter" in metrics
    )
    assert missing.startswith(b"HTTP/1.1 404")
    assert post.startswith(b"HTTP/1.1 405")
    assert garbage.startswith(b"HTTP/1.1 400")
