"""What mirror needs from the packages it runs on, checked where an upgrade would break it.

Two promises. Every third-party module the package imports (at the top of a module or inside a
function) comes from a distribution that ``pyproject.toml`` declares, so a plain ``pip install``
brings it (the suite's own venv has test extras that can hide an undeclared one; the
plain-install test in tests/integration/test_install.py catches the same at run time). And the
private parts of httpx, httpcore and asyncio that ``mirror/transport.py`` and
``mirror/registry.py`` rely on are still where they were: each test names the attribute, so an
upgrade past the pins fails here, loudly, instead of deep in a copy.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import sys
import tomllib
from pathlib import Path

import httpcore
import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mirror"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a module, wherever it sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(text).name) for text in project["dependencies"]}


def third_party_imports() -> dict[str, set[str]]:
    """Each third-party top-level module the package imports -> the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for name in imported_modules(path):
            if name in sys.stdlib_module_names or name in ("mirror", "__future__"):
                continue
            found.setdefault(name, set()).add(path.name)
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    owners = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    missing = []
    for module, files in sorted(third_party_imports().items()):
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        assert distributions, f"module {module} (imported by {sorted(files)}) is not installed"
        if not distributions & declared:
            missing.append(f"{module} ({', '.join(sorted(distributions))}; {sorted(files)})")
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from packaging.version import Version\n    import rich\n")
    assert imported_modules(module) == {"packaging", "rich"}


def test_httpx_and_httpcore_are_pinned_to_a_minor_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {Requirement(t).name: Requirement(t).specifier for t in project["dependencies"]}
    for name in ("httpx", "httpcore"):
        installed = importlib.metadata.version(name)
        assert pins[name].contains(installed), f"{name} {installed} is outside {pins[name]}"
        upper = [s for s in pins[name] if s.operator == "<"]
        assert upper, f"{name} has no upper bound in pyproject.toml"
        major, minor = (int(p) for p in installed.split(".")[:2])
        assert upper[0].version in (f"{major}.{minor + 1}", f"{major + 1}"), (
            f"{name}'s upper bound {upper[0]} allows another minor version than {installed}"
        )


# --- the private parts mirror/transport.py and mirror/registry.py use -------------------------


def test_httpx_transport_keeps_its_pool_in_the_private_pool_attribute() -> None:
    transport = httpx.AsyncHTTPTransport()
    assert "_pool" in vars(transport), (
        "httpx.AsyncHTTPTransport._pool is gone: mirror/transport.py replaces it with its pool"
    )
    source = inspect.getsource(httpx.AsyncHTTPTransport.handle_async_request)
    assert "self._pool.handle_async_request" in source, (
        "httpx.AsyncHTTPTransport.handle_async_request no longer sends through self._pool"
    )


def test_httpx_client_reads_and_fills_cookies_through_its_cookies_property() -> None:
    # registry._Client overrides the `cookies` property with an empty jar that keeps nothing.
    source = inspect.getsource(httpx.AsyncClient._send_single_request)
    assert "self.cookies.extract_cookies(response)" in source, (
        "httpx.AsyncClient._send_single_request no longer stores cookies through "
        "self.cookies.extract_cookies"
    )
    assert isinstance(inspect.getattr_static(httpx.AsyncClient, "cookies"), property), (
        "httpx.AsyncClient.cookies is no longer a property"
    )


def test_httpx_hands_the_connect_timeout_to_httpcore_under_connect() -> None:
    assert "connect" in httpx.Timeout(1.0).as_dict(), (
        "httpx.Timeout.as_dict() has no 'connect' key: transport._Pool reads it from the "
        "request's 'timeout' extension"
    )


@pytest.mark.parametrize("name", ["has_expired", "is_idle", "handle_async_request", "aclose"])
def test_httpcore_http11_connection_has_what_the_pool_calls(name: str) -> None:
    assert callable(getattr(httpcore.AsyncHTTP11Connection, name, None)), (
        f"httpcore.AsyncHTTP11Connection.{name} is gone"
    )


def test_httpcore_http11_connection_takes_a_ready_stream() -> None:
    parameters = inspect.signature(httpcore.AsyncHTTP11Connection).parameters
    for name in ("origin", "stream", "keepalive_expiry"):
        assert name in parameters, f"httpcore.AsyncHTTP11Connection() lost its {name}= argument"


def test_httpcore_asks_an_idle_stream_is_readable_to_know_it_expired() -> None:
    source = inspect.getsource(httpcore.AsyncHTTP11Connection.has_expired)
    assert '"is_readable"' in source, (
        "httpcore.AsyncHTTP11Connection.has_expired no longer asks the stream's "
        "get_extra_info('is_readable'): transport._Stream answers that without a system call"
    )


@pytest.mark.parametrize("name", ["read", "write", "aclose", "start_tls", "get_extra_info"])
def test_httpcore_network_stream_interface(name: str) -> None:
    assert callable(getattr(httpcore.AsyncNetworkStream, name, None)), (
        f"httpcore.AsyncNetworkStream.{name} is gone: transport._Stream implements it"
    )


async def test_asyncio_stream_reader_keeps_unread_bytes_in_buffer() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"waiting")
    assert bytes(getattr(reader, "_buffer", b"")) == b"waiting", (
        "asyncio.StreamReader._buffer is gone: transport._Stream reads it to skip a timer"
    )


def test_starting_mirror_does_not_load_httpxs_command_line_client() -> None:
    """apprise brings click, and httpx imports its own CLI (click, rich, pygments) whenever it
    can: ~120 ms on every `mirror` start. mirror/__init__.py marks it absent."""
    import subprocess

    probe = (
        "import sys, mirror.cli, mirror.clients, httpx; "
        "print(sorted(m for m in ('click', 'rich.console', 'pygments') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert importlib.metadata.distribution("click")  # it is installed: the guard is what holds
