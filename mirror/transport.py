"""The network under httpx: a small keep-alive pool of httpcore connections on asyncio's
own streams.

Owns sockets, timeouts, TLS handshakes, which connection a request goes out on, and whether
the environment sends it through a proxy (``HTTPS_PROXY``/``NO_PROXY``); not HTTP (httpcore
speaks it) and nothing of registries. Why it exists: httpcore's pool reaches asyncio
through anyio, and on every request it asks each idle connection whether the server closed
it, which anyio answers by rebuilding a table of socket attributes (a getpeername call) and
polling the socket; it also matches every queued request against every connection on each
request and response. That bookkeeping was a quarter of a no-op run's CPU, then a tenth of a
first sync's. asyncio's stream reader already knows whether the peer spoke or left.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpcore
import httpx

KEEPALIVE_EXPIRY_S = 5.0  # httpx's default: an idle connection older than this is not reused
READ_BUFFER_BYTES = 1024 * 1024  # what a connection reads ahead before pausing the socket
READ_BYTES = 256 * 1024  # the most one read hands httpcore
HOLD_BYTES = 64 * 1024  # a write this small waits for the next one (headers for their body)
# Unsent bytes past which a write waits for the socket (asyncio's own high-water mark: drain
# would not wait below it), so a caller writing many small pieces cannot pile up memory.
WRITE_HIGH_WATER_BYTES = 64 * 1024
# RFC 8305's delay before racing the next address: a host whose IPv6 address is black-holed
# costs a quarter of a second, not the whole connect timeout.
HAPPY_EYEBALLS_DELAY_S = 0.25
# httpcore's names for what a connection can tell -> asyncio's
_EXTRA_INFO = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


class _Stream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection, as httpcore reads and writes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._held = b""

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB at a time; handing it up to READ_BYTES of what has arrived
        # cuts the HTTP parsing per byte (h11 takes any amount): a 512 MiB blob's copy took
        # 18 % less CPU and ran 5-8 % faster.
        size = max(max_bytes, READ_BYTES)
        try:
            self._send_held()  # the request is complete: the response is what comes next
            if self._buffered():
                return await self._reader.read(size)  # returns at once: no timer needed
            async with asyncio.timeout(timeout):
                return await self._reader.read(size)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data for {timeout:g} s") from None
        except (OSError, EOFError) as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    def _buffered(self) -> bool:
        """Whether bytes have arrived that nobody has read yet. StreamReader keeps its buffer
        private; without it this says no, which only costs a timer or a missed early close."""
        return bool(getattr(self._reader, "_buffer", None))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send ``buffer``. h11 hands a request's head, body and end over in separate writes;
        a small one is held until the next write or read, or the loop's next turn (a body
        that is not ready at once), so a small PUT leaves in one segment, not two: one system
        call instead of two, and one wake-up of the server instead of two."""
        if not buffer:
            return
        if self._held and len(self._held) + len(buffer) <= HOLD_BYTES:
            self._held += buffer  # its send is scheduled already
        else:
            self._send_held()
            if len(buffer) <= HOLD_BYTES:
                self._held = buffer
                asyncio.get_running_loop().call_soon(self._send_held)
            else:
                self._writer.write(buffer)
        if self._writer.transport.get_write_buffer_size() <= WRITE_HIGH_WATER_BYTES:
            return  # the socket is keeping up (or took it all): nothing to wait for
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send for {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    def _send_held(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            if not self._writer.is_closing():
                self._writer.write(held)  # small: the transport buffers what the socket refuses

    async def aclose(self) -> None:
        self._held = b""
        self._writer.close()  # the loop closes the socket; a stuck peer cannot hold us here

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            self._writer.close()
            raise httpcore.ConnectTimeout(f"TLS handshake took over {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            self._writer.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of every idle connection on every request: has the server spoken out of
            # turn or hung up? The loop feeds whatever arrives into the reader as it comes, so
            # its buffer and EOF say so without a system call.
            return self._reader.at_eof() or self._buffered() or self._writer.transport.is_closing()
        name = _EXTRA_INFO.get(info)
        return self._writer.get_extra_info(name) if name else None


async def open_tcp(host: str, port: int, timeout: float | None) -> _Stream:
    """A TCP connection for httpcore on asyncio's streams, its failures in httpcore's terms."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=READ_BUFFER_BYTES, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S
            )
    except TimeoutError:
        where = f"{host}:{port}"
        raise httpcore.ConnectTimeout(f"no connection to {where} within {timeout:g} s") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    return _Stream(reader, writer)


_Key = tuple[bytes, bytes, int]  # an origin: scheme, host, port (httpcore's Origin is unhashable)


class _Pool:
    """Keep-alive HTTP/1.1 connections, a stack of idle ones per origin.

    What httpx's transport needs of httpcore's pool, without its bookkeeping: on every
    request and every response closed, httpcore's pool matched all queued requests against
    all connections and asked each whether it had expired, 10 % of a 2,000-tag sync's CPU.
    Here a request takes the most recently used idle connection (checked for expiry and a
    server hang-up) or opens one, and a closed response puts its connection back. Requests
    are bounded by each Registry's slots, so the pool bounds only what it keeps idle.
    """

    def __init__(self, ssl_context: ssl.SSLContext, max_idle: int) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._idle: dict[_Key, list[httpcore.AsyncHTTP11Connection]] = {}  # per origin
        self._closed = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        origin = request.url.origin
        key = (origin.scheme, origin.host, origin.port)
        connection = await self._reuse(key) or await self._connect(request)
        # On failure httpcore's connection closes itself; it never returns here.
        response = await connection.handle_async_request(request)
        stream = _Returning(response.stream, lambda: self._release(key, connection))
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=stream,
            extensions=response.extensions,
        )

    async def _reuse(self, key: _Key) -> httpcore.AsyncHTTP11Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.has_expired():  # idle too long, or the server hung up
                return connection
            await connection.aclose()
        return None

    async def _connect(self, request: httpcore.Request) -> httpcore.AsyncHTTP11Connection:
        origin = request.url.origin
        host = origin.host.decode("ascii")
        timeout = request.extensions.get("timeout", {}).get("connect")
        stream: httpcore.AsyncNetworkStream = await open_tcp(host, origin.port, timeout)
        if origin.scheme == b"https":
            sni = request.extensions.get("sni_hostname") or host
            try:
                stream = await stream.start_tls(self._ssl_context, sni, timeout)
            except BaseException:  # cancelled mid-handshake: do not leave the socket open
                await stream.aclose()
                raise
        return httpcore.AsyncHTTP11Connection(
            origin=origin, stream=stream, keepalive_expiry=KEEPALIVE_EXPIRY_S
        )

    async def _release(self, key: _Key, connection: httpcore.AsyncHTTP11Connection) -> None:
        idle = self._idle.setdefault(key, [])
        for stale in [c for c in idle if c.has_expired()]:
            idle.remove(stale)
            await stale.aclose()
        if connection.is_idle() and not self._closed and len(idle) < self._max_idle:
            idle.append(connection)  # the response was read to its end: reusable
        else:
            await connection.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connection in (c for stack in idle.values() for c in stack):
            await connection.aclose()

    async def __aenter__(self) -> _Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Returning:
    """A response body that gives its connection back to the pool once closed."""

    def __init__(
        self, stream: Iterable[bytes] | AsyncIterable[bytes], release: Callable[[], Awaitable[None]]
    ) -> None:
        assert isinstance(stream, AsyncIterable)
        self._stream = stream
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            try:
                await self._stream.aclose()  # type: ignore[attr-defined]
            finally:
                await release()


class _PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with ``_Pool`` on asyncio streams in place of httpcore's pool.

    httpx maps httpcore's errors and responses; only the pool it holds is ours to choose (it
    offers no argument for it, so the pool is replaced after construction).
    """

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int) -> None:
        super().__init__(verify=ssl_context)
        self._pool = _Pool(ssl_context, max_connections)  # type: ignore[assignment]


@functools.cache
def ssl_context(verify: bool | str = True) -> ssl.SSLContext:
    """One TLS context per way of verifying, shared by every registry of the process (making
    one that loads the CA bundle takes 15-20 ms). ``verify`` is True (httpx's CA bundle, or
    SSL_CERT_FILE/SSL_CERT_DIR), False (no verification) or a CA file."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def environment_proxy(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` for https, ``HTTP_PROXY``
    for http, else ``ALL_PROXY``; lower case first, as curl reads them), or None when there
    is none or ``NO_PROXY`` exempts the host."""

    def variable(name: str) -> str:
        return environ.get(name) or environ.get(name.upper()) or ""

    parsed = urllib.parse.urlsplit(url)
    proxy = variable(f"{parsed.scheme}_proxy") or variable("all_proxy")
    if (
        not proxy
        or not parsed.hostname
        or exempt(parsed.hostname, parsed.port, variable("no_proxy"))
    ):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def exempt(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host`` (curl's rules): ``*`` every host; a name that host
    or any under it (``example.com``, ``.example.com``); an address or a CIDR range;
    ``name:port`` only that port."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        name = name.strip("[]")
        if entry_port and (not entry_port.isdigit() or int(entry_port) != port):
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
            continue
        except ValueError:
            pass  # a name, not an address
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def transport_for(
    base_url: str, verify: bool | str, max_connections: int
) -> httpx.AsyncBaseTransport:
    """The transport for one registry's client: ``_Pool`` on asyncio streams, or, when the
    environment sends this registry through a proxy, httpx's own transport speaking to that
    proxy. Either way requests are bounded by the client's slots, so neither pool caps its
    connections (a cap that held blob streams fill would starve their uploads)."""
    proxy = environment_proxy(base_url)
    if proxy is None:
        return _PooledTransport(ssl_context(verify), max_connections)
    return httpx.AsyncHTTPTransport(
        verify=ssl_context(verify),
        proxy=proxy,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_connections),
    )
