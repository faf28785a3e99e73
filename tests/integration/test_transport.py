"""mirror.transport: the keep-alive pool on asyncio streams, against real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httpcore
import httpx
import pytest

from mirror import transport
from mirror.registry import Registry
from mirror.transport import _Pool, environment_proxy, exempt, transport_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback HTTP server; yields its base URL and a list that counts connections."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield f"http://127.0.0.1:{port}", connections


def client(base_url: str, **kwargs: object) -> httpx.AsyncClient:
    transport = transport_for(base_url, False, 4)
    assert isinstance(getattr(transport, "_pool", None), _Pool)
    return httpx.AsyncClient(base_url=base_url, transport=transport, **kwargs)  # type: ignore[arg-type]


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()


async def test_keep_alive_reuses_one_connection() -> None:
    async with server(keep_answering) as (url, connections), client(url) as http:
        for _ in range(5):
            assert (await http.get("/")).text == "ok"
    assert len(connections) == 1


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    # The server answers once and hangs up without saying "Connection: close": the pool must
    # notice the idle connection went away (the stream's EOF) and open another.
    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    async with server(one_answer) as (url, connections), client(url) as http:
        for _ in range(3):
            assert (await http.get("/")).text == "ok"
            await asyncio.sleep(0.05)  # the FIN arrives while the connection idles
    assert len(connections) == 3


async def test_concurrent_requests_each_get_a_connection_and_all_are_kept() -> None:
    async with server(keep_answering) as (url, connections), client(url) as http:
        answers = await asyncio.gather(*(http.get("/") for _ in range(4)))
        assert [a.text for a in answers] == ["ok"] * 4
        assert len(connections) == 4
        await asyncio.gather(*(http.get("/") for _ in range(4)))
        assert len(connections) == 4  # the four idle ones were reused


async def test_no_more_than_the_bound_are_kept_idle() -> None:
    async with server(keep_answering) as (url, connections), client(url) as http:
        await asyncio.gather(*(http.get("/") for _ in range(6)))  # bound: 4
        await asyncio.gather(*(http.get("/") for _ in range(6)))
        assert len(connections) == 8  # 6, then 4 reused and 2 new


async def test_a_response_left_unread_does_not_return_its_connection() -> None:
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(body)
            await writer.drain()

    async with server(big) as (url, connections), client(url) as http:
        async with http.stream("GET", "/") as response:
            async for _chunk in response.aiter_raw():
                break  # the rest of the body is still on the wire
        assert len((await http.get("/")).content) == 100_000
        assert len(connections) == 2


async def test_an_idle_connection_past_its_expiry_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "KEEPALIVE_EXPIRY_S", 0.05)
    async with server(keep_answering) as (url, connections), client(url) as http:
        await http.get("/")
        await asyncio.sleep(0.1)
        await http.get("/")
        assert len(connections) == 2


async def test_closing_the_client_closes_its_idle_connections() -> None:
    ended = asyncio.Event()

    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        if not await reader.read(1):
            ended.set()

    async with server(until_eof) as (url, _):
        async with client(url) as http:
            await http.get("/")
        async with asyncio.timeout(2):
            await ended.wait()


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with server(silent) as (url, _), client(url, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")


async def test_a_reset_after_part_of_the_body_is_an_httpx_read_error() -> None:
    # Bytes still buffered when the reset arrives must not let the raw ConnectionResetError
    # out: callers catch httpx's errors only.
    async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with server(reset_mid_body) as (url, _), client(url) as http:
        with pytest.raises(httpx.ReadError, match="reset"):
            async with http.stream("GET", "/") as response:
                first = True
                async for _chunk in response.aiter_raw():
                    if first:  # the rest of the bytes wait in the reader while the RST lands
                        first = False
                        await asyncio.sleep(0.2)


async def test_a_refused_connection_is_a_connect_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError, match=r"127\.0\.0\.1"):
            await http.get("/")


async def test_a_streamed_body_arrives_whole_in_both_directions() -> None:
    size = 3 * 1024 * 1024 + 17

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, size, 65536):
            yield bytes([start // 65536 % 256]) * min(65536, size - start)

    async with (
        server(echo) as (url, _),
        client(url) as http,
        http.stream(
            "PUT", "/", content=chunks(), headers={"Content-Length": str(size)}
        ) as response,
    ):
        received = b"".join([c async for c in response.aiter_bytes()])
    assert len(received) == size
    assert received[:1] == b"\x00" and received[-1:] == bytes([(size - 1) // 65536 % 256])


async def read_put(reader: asyncio.StreamReader) -> bytes:
    head = await read_request(reader)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def test_a_small_request_leaves_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    # h11 hands over head and body separately; sent apart they cost two system calls and
    # two wake-ups of the server for every manifest or small blob.
    sent: list[bytes] = []
    real_send = socket.socket.send

    def send(sock: socket.socket, data: bytes, *args: int) -> int:
        sent.append(bytes(data))
        return real_send(sock, data, *args)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_put(reader)
            writer.write(OK)

    async with server(answer) as (url, _), client(url) as http:
        monkeypatch.setattr(socket.socket, "send", send)
        for body in (b"x" * 100, b"y" * 3000):
            assert (await http.put("/v2/a/manifests/t", content=body)).text == "ok"
    puts = [s for s in sent if s.startswith(b"PUT ")]
    assert [len(p.split(b"\r\n\r\n", 1)[1]) for p in puts] == [100, 3000]


async def test_a_request_head_goes_out_before_a_body_that_is_not_ready() -> None:
    # The head is held for the body only within one turn of the loop: a streamed body that
    # waits for something (here: for the server to have seen the head) must not deadlock.
    head_seen = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head_seen.set()
        await reader.readexactly(4)
        writer.write(OK)

    async def body() -> AsyncIterator[bytes]:
        await head_seen.wait()
        yield b"body"

    async with server(answer) as (url, _), client(url) as http:
        async with asyncio.timeout(5):
            response = await http.put("/", content=body(), headers={"Content-Length": "4"})
    assert response.text == "ok"


PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_the_proxy_is_chosen_per_scheme_as_curl_does(no_proxy_settings: pytest.MonkeyPatch) -> None:
    env = no_proxy_settings
    assert environment_proxy("https://registry-1.docker.io/v2/") is None
    env.setenv("HTTPS_PROXY", "proxy.corp:3128")
    env.setenv("http_proxy", "http://plain.corp:8080")

    assert environment_proxy("https://registry-1.docker.io/v2/") == "http://proxy.corp:3128"
    assert environment_proxy("http://registry.local:5000/v2/") == "http://plain.corp:8080"
    env.delenv("http_proxy")
    env.setenv("ALL_PROXY", "http://all.corp:1")
    assert environment_proxy("http://registry.local:5000/v2/") == "http://all.corp:1"


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "exempted"),
    [
        ("registry.local", 5000, "registry.local", True),
        ("registry.local", 5000, "registry.local:5000", True),
        ("registry.local", 5000, "registry.local:5001", False),
        ("a.corp.example", 443, ".corp.example", True),
        ("a.corp.example", 443, "corp.example", True),
        ("notcorp.example", 443, "corp.example", False),
        ("10.1.2.3", 5000, "10.0.0.0/8", True),
        ("127.0.0.1", 5000, "localhost,127.0.0.1", True),
        ("::1", 5000, "::1", True),
        ("docker.io", 443, "*", True),
        ("docker.io", 443, " , ", False),
    ],
)
def test_no_proxy_exempts_hosts_as_curl_does(
    host: str, port: int, no_proxy: str, exempted: bool
) -> None:
    assert exempt(host, port, no_proxy) is exempted


def test_a_proxied_registry_gets_an_uncapped_proxy_transport_the_rest_our_pool(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    no_proxy_settings.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    no_proxy_settings.setenv("NO_PROXY", "registry.local")

    proxied = transport_for("https://registry-1.docker.io", True, 8)
    direct = transport_for("https://registry.local:5000", True, 8)

    assert isinstance(getattr(direct, "_pool", None), _Pool)
    pool = getattr(proxied, "_pool", None)
    assert isinstance(pool, httpcore.AsyncHTTPProxy)
    # Held blob streams must never starve their uploads of a connection: no cap here either.
    assert pool._max_connections is None or pool._max_connections >= 1_000_000


async def test_registries_use_the_asyncio_pool(no_proxy_settings: pytest.MonkeyPatch) -> None:
    registry = Registry("127.0.0.1:5000")
    try:
        transport = registry._http._http._transport
        pool = getattr(transport, "_pool", None)
        assert isinstance(pool, _Pool)
    finally:
        await registry.aclose()


async def test_small_writes_the_peer_does_not_read_stop_at_the_high_water_mark() -> None:
    # A peer that reads nothing: the writer must wait (and time out) rather than buffer
    # every small piece it is handed.
    stalled = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stalled.wait()

    async with server(never_reads) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        stream = await transport.open_tcp(host, int(port), timeout=2)
        sent = 0
        with pytest.raises(httpcore.WriteTimeout):
            for _ in range(100_000):  # far more than socket buffers hold
                await stream.write(b"x" * 4096, timeout=0.3)
                sent += 4096
        buffered = stream._writer.transport.get_write_buffer_size()
        await stream.aclose()
        stalled.set()
    assert buffered <= transport.WRITE_HIGH_WATER_BYTES + transport.HOLD_BYTES + 4096
    assert sent < 100_000 * 4096


async def test_a_black_holed_address_costs_the_happy_eyeballs_delay_not_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 127.0.0.2 listens but its accept queue is full, so the kernel drops further SYNs: a
    # black hole. 127.0.0.3 answers. A name resolving to both must connect at once.
    hole = socket.socket()
    hole.bind(("127.0.0.2", 0))
    port = hole.getsockname()[1]
    hole.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.2", port))
        fillers.append(filler)
    await asyncio.sleep(0.1)
    answering = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.3", port)
    loop = asyncio.get_running_loop()

    async def both(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        assert host == "dual.test"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", both)
    try:
        started = loop.time()
        stream = await transport.open_tcp("dual.test", port, timeout=5)
        elapsed = loop.time() - started
        assert stream.get_extra_info("server_addr")[0] == "127.0.0.3"
        await stream.aclose()
    finally:
        answering.close()
        hole.close()
        for filler in fillers:
            filler.close()
    assert elapsed < 1.0, f"took {elapsed:.2f} s: the black-holed address held the connect"
