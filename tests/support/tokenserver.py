"""A Docker-Hub-like token server for the token-auth test registry.

This module owns the *auth side* of the "hub" registry: a signing key and a
self-signed certificate (written to ``cert_path`` for the registry's
``auth.token.rootcertbundle``), hand-made JWTs (JWS compact, ES256 or RS256, with
the libtrust ``kid`` distribution looks keys up by, optionally ``x5c`` too), the
``GET /token`` endpoint (``service``, repeated ``scope``, Basic auth) plus the
OAuth2 ``POST /token`` password grant, and a record of every token request so tests
can count fetches (and of every token handed out over HTTP, so tests can search
logs for them).

Policy: a user with the right password gets the requested ``pull``/``push``
actions; anonymous callers get ``pull`` only; a wrong password is a 401 with
``{"details": "incorrect username or password"}``.

``HubRegistry`` bundles a token-auth ``RegistryProcess`` with its ``TokenServer``.
Note that distribution accepts a token until 60 s *after* its ``exp`` (clock-skew
leeway); see ``exp_claim_offset_s``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.registry import RegistryProcess, TokenAuth

DEFAULT_USERS: Mapping[str, str] = {"tester": "s3cret-pa55"}
USER_ACTIONS = frozenset({"pull", "push"})
ANONYMOUS_ACTIONS = frozenset({"pull"})

Algorithm = Literal["ES256", "RS256"]
ResponseFields = Literal["both", "token", "access_token"]


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """The key id docker/libtrust (and so distribution) derives from a public key.

    SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32 without
    padding, in 12 groups of 4 characters joined by ``:``.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_jwt_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, without checking the signature."""

    def part(segment: str) -> dict[str, Any]:
        padded = segment + "=" * (-len(segment) % 4)
        value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
        return value

    header, claims, _signature = token.split(".")
    return part(header), part(claims)


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:library/alpine:pull,push`` -> (type, name, actions); None if malformed."""
    resource_type, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return resource_type, name, [a for a in actions.split(",") if a]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str  # "GET" or "POST"
    scopes: tuple[str, ...]
    username: str | None  # None: anonymous (or a failed login: see status)
    service: str | None
    status: int
    at: float = field(default_factory=time.time)


class TokenServer:
    """The token endpoint at ``realm`` (``http://127.0.0.1:PORT/token``).

    Attributes ``lifetime_s``, ``response_fields``, ``exp_claim_offset_s`` and
    ``answer_html`` may be changed while running; ``reset()`` restores the construction
    values and forgets recorded requests and issued tokens.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        service: str = "hub.test",
        issuer: str = "mirror-test-token-issuer",
        lifetime_s: int = 300,
        response_fields: ResponseFields = "both",
        algorithm: Algorithm = "ES256",
        include_x5c: bool = False,
        exp_claim_offset_s: int = 0,
        answer_html: bool = False,
        workdir: Path | None = None,
    ) -> None:
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.service = service
        self.issuer = issuer
        self.algorithm: Algorithm = algorithm
        self.include_x5c = include_x5c
        self._defaults = (lifetime_s, response_fields, exp_claim_offset_s, answer_html)
        self.lifetime_s = lifetime_s
        self.response_fields: ResponseFields = response_fields
        # Added to the JWT's ``exp`` only (not to ``expires_in``).  distribution
        # accepts tokens up to 60 s after ``exp``; a test that needs the registry to
        # reject a token after N seconds sets lifetime_s=N and this to -61.
        self.exp_claim_offset_s = exp_claim_offset_s
        # A broken token endpoint (a captive portal, a proxy's error page): every token
        # request, good password or not, gets 200 with an HTML page instead of JSON.
        self.answer_html = answer_html
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tokensrv-"))
        self.cert_path = self.workdir / "token-cert.pem"
        self._key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if algorithm == "ES256"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        self.key_id = libtrust_key_id(self._key.public_key())
        self._cert = self._self_signed_cert()
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._issued: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token server not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def auth_config(self) -> TokenAuth:
        """The ``auth.token`` settings for a ``RegistryProcess`` trusting this server."""
        return TokenAuth(
            realm=self.realm,
            service=self.service,
            issuer=self.issuer,
            rootcertbundle=self.cert_path,
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        server.daemon_threads = True
        server.block_on_close = False
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"token-server:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; the certificate file stays (a registry re-reads it on restart)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop and remove the temporary directory (if this object created it)."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def reset(self) -> None:
        """Restore construction-time options; forget recorded requests and issued tokens."""
        (
            self.lifetime_s,
            self.response_fields,
            self.exp_claim_offset_s,
            self.answer_html,
        ) = self._defaults
        with self._lock:
            self._requests.clear()
            self._issued.clear()

    # -- records ---------------------------------------------------------------

    def requests(self) -> list[TokenRequest]:
        """Every token request answered so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def issued_tokens(self) -> list[str]:
        """Every token the endpoint handed out over HTTP since the last ``reset()``
        (not those minted directly with ``issue_token``), oldest first."""
        with self._lock:
            return list(self._issued)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- tokens ----------------------------------------------------------------

    def check_password(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        return expected is not None and secrets.compare_digest(expected, password)

    def granted_access(self, scopes: Iterable[str], user: str | None) -> list[dict[str, Any]]:
        """The ``access`` claim for ``scopes`` requested by ``user`` (None = anonymous)."""
        allowed = USER_ACTIONS if user is not None else ANONYMOUS_ACTIONS
        by_name: dict[str, list[str]] = {}
        catalog = False
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is not None and parsed[:2] == ("registry", "catalog"):
                catalog = user is not None  # listing repositories takes a login, as on Harbor
                continue
            if parsed is None or parsed[0] != "repository":
                continue
            _type, name, actions = parsed
            granted = by_name.setdefault(name, [])
            granted.extend(a for a in actions if a in allowed and a not in granted)
        access = [
            {"type": "repository", "name": name, "actions": actions}
            for name, actions in by_name.items()
        ]
        if catalog:
            access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
        return access

    def issue_token(self, scopes: Sequence[str], user: str | None = "tester") -> str:
        """Mint a token directly (no HTTP, not recorded), e.g. for pushing fixtures.

        ``user`` is trusted without a password; ``None`` mints an anonymous token.
        """
        return self._sign(self._claims(scopes, user))

    def _claims(self, scopes: Iterable[str], user: str | None) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime_s + self.exp_claim_offset_s,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.granted_access(scopes, user),
        }

    def _sign(self, claims: Mapping[str, Any]) -> str:
        header: dict[str, Any] = {"typ": "JWT", "alg": self.algorithm, "kid": self.key_id}
        if self.include_x5c:
            header["x5c"] = [
                base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
            ]
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode("ascii")
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            der = self._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r||s
        else:
            signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode("ascii") + "." + b64url(signature)

    def token_response(self, scopes: Sequence[str], user: str | None) -> dict[str, Any]:
        """The JSON body the endpoint answers with (its token is recorded as issued)."""
        token = self._sign(self._claims(scopes, user))
        with self._lock:
            self._issued.append(token)
        body: dict[str, Any] = {
            "expires_in": self.lifetime_s,
            "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        if self.response_fields in ("both", "token"):
            body["token"] = token
        if self.response_fields in ("both", "access_token"):
            body["access_token"] = token
        return body

    def _self_signed_cert(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror test token issuer")])
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-token-server/1"
    timeout = 30  # idle keep-alive connections give up eventually
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    @property
    def owner(self) -> TokenServer:
        owner: TokenServer = self.server.owner  # type: ignore[attr-defined]
        return owner

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        user, _, password = decoded.partition(":")
        return user, password

    def _answer(
        self, scopes: list[str], service: str | None, creds: tuple[str, str] | None
    ) -> None:
        owner = self.owner
        if owner.answer_html:
            owner._record(TokenRequest(self.command, tuple(scopes), None, service, 200))
            page = b"<!DOCTYPE html><html><body><h1>Sign in to continue</h1></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        user: str | None = None
        if creds is not None:
            if not owner.check_password(*creds):
                owner._record(TokenRequest(self.command, tuple(scopes), None, service, 401))
                self._send_json(401, {"details": "incorrect username or password"})
                return
            user = creds[0]
        body = owner.token_response(scopes, user)
        owner._record(TokenRequest(self.command, tuple(scopes), user, service, 200))
        self._send_json(200, body)

    @staticmethod
    def _split_scopes(values: Iterable[str]) -> list[str]:
        return [scope for value in values for scope in value.split(" ") if scope]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token":
            self._send_json(404, {"details": "not found"})
            return
        query = parse_qs(url.query, keep_blank_values=True)
        service = query.get("service", [None])[0]
        self._answer(self._split_scopes(query.get("scope", [])), service, self._basic_credentials())

    def do_POST(self) -> None:
        """OAuth2 password grant (``grant_type=password``), as Docker Hub supports."""
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        if urlsplit(self.path).path != "/token":
            self._send_json(404, {"details": "not found"})
            return
        if form.get("grant_type", [""])[0] != "password":
            self._send_json(400, {"error": "unsupported_grant_type"})
            return
        creds = (form.get("username", [""])[0], form.get("password", [""])[0])
        service = form.get("service", [None])[0]
        self._answer(self._split_scopes(form.get("scope", [])), service, creds)


TokenGetter = Callable[[list[str]], str]


def token_getter(server: TokenServer, user: str | None = "tester") -> TokenGetter:
    """A ``(scopes) -> token`` callback minting tokens for ``user`` (None: anonymous)."""

    def get(scopes: list[str]) -> str:
        return server.issue_token(scopes, user)

    return get


class HubRegistry(RegistryProcess):
    """A token-auth ``RegistryProcess`` together with the ``TokenServer`` it trusts."""

    def __init__(self, token_server: TokenServer, **kwargs: Any) -> None:
        super().__init__(token_auth=token_server.auth_config, **kwargs)
        self.token_server = token_server

    def token_getter(self, user: str | None = "tester") -> TokenGetter:
        """Mints tokens for ``user`` (default: the push-capable test user)."""
        return token_getter(self.token_server, user)
