"""Image references and digests: Docker's naming rules, the distribution grammar, and errors
that name the offending text."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mirror.errors import InvalidReference, MirrorError
from mirror.reference import (
    Digest,
    Reference,
    is_loopback_host,
    parse_reference,
    parse_repository,
)

SHA = "sha256:" + "ab" * 32
OTHER_SHA = "sha256:" + "cd" * 32


# --- Docker Hub normalisation -----------------------------------------------------------------


def test_user_repository_means_docker_hub_at_latest() -> None:
    ref = parse_reference("diamol/golang")

    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "diamol/golang",
        None,
        None,
    )
    assert str(ref.with_default_tag()) == "docker.io/diamol/golang:latest"


def test_one_part_name_is_an_official_image_under_library() -> None:
    ref = parse_reference("golang")

    assert ref.repository == "library/golang"
    assert str(ref.with_default_tag()) == "docker.io/library/golang:latest"


@pytest.mark.parametrize(
    "alias", ["index.docker.io", "registry-1.docker.io", "docker.io", "Docker.IO"]
)
def test_docker_hub_aliases_are_shown_as_docker_io(alias: str) -> None:
    assert parse_reference(f"{alias}/diamol/golang:1.22") == parse_reference("diamol/golang:1.22")
    assert parse_reference(f"{alias}/golang").repository == "library/golang"


def test_library_prefix_is_not_doubled() -> None:
    assert parse_reference("library/golang") == parse_reference("golang")
    assert parse_reference("docker.io/library/golang").repository == "library/golang"


def test_with_default_tag_leaves_a_tag_or_digest_alone() -> None:
    tagged = parse_reference("golang:1.22")
    pinned = parse_reference(f"golang@{SHA}")

    assert tagged.with_default_tag() == tagged
    assert pinned.with_default_tag() == pinned
    assert pinned.with_default_tag().tag is None


# --- registries, ports, tags, digests ---------------------------------------------------------


def test_registry_with_port_and_nested_path() -> None:
    ref = parse_reference("registry.local:5000/gallery/ui:v1")

    assert ref.registry == "registry.local:5000"
    assert ref.repository == "gallery/ui"
    assert ref.tag == "v1"
    assert ref.name == "registry.local:5000/gallery/ui"
    assert ref.reference == "v1"


def test_localhost_is_a_registry_and_gets_no_library_prefix() -> None:
    ref = parse_reference("localhost:5000/x")

    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "x", None)
    assert parse_reference("localhost/x").registry == "localhost"


def test_one_part_name_with_a_colon_is_an_image_and_tag_not_a_registry() -> None:
    ref = parse_reference("localhost:5000")

    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "library/localhost", "5000")


def test_digest_reference() -> None:
    ref = parse_reference(f"ghcr.io/o/r@{SHA}")

    assert (ref.registry, ref.repository, ref.tag) == ("ghcr.io", "o/r", None)
    assert ref.digest == SHA
    assert isinstance(ref.digest, Digest)
    assert ref.reference == SHA


def test_tag_and_digest_together_keep_both_and_the_digest_wins_on_the_wire() -> None:
    ref = parse_reference(f"name:tag@{SHA}")

    assert (ref.repository, ref.tag, ref.digest) == ("library/name", "tag", SHA)
    assert ref.reference == SHA
    assert str(ref) == f"docker.io/library/name:tag@{SHA}"


def test_ipv6_registry_with_port() -> None:
    ref = parse_reference("[::1]:5000/a")

    assert (ref.registry, ref.repository) == ("[::1]:5000", "a")
    assert parse_reference("[::1]:5000/a:v2").tag == "v2"


def test_sha512_digest_is_accepted() -> None:
    digest = "sha512:" + "0f" * 64
    assert parse_reference(f"a/b@{digest}").digest == digest


def test_parse_repository_refuses_a_tag_or_digest() -> None:
    assert parse_repository("registry.local:5000/gallery/ui").repository == "gallery/ui"
    for text in ("registry.local:5000/gallery/ui:v1", f"a/b@{SHA}"):
        with pytest.raises(InvalidReference) as caught:
            parse_repository(text)
        assert text in str(caught.value)


def test_with_tag_and_with_digest_replace_the_reference() -> None:
    base = parse_reference(f"a/b:old@{SHA}")

    assert base.with_tag("new") == Reference("docker.io", "a/b", tag="new")
    assert base.with_digest(OTHER_SHA) == Reference("docker.io", "a/b", digest=Digest(OTHER_SHA))
    with pytest.raises(InvalidReference):
        base.with_tag("-bad")
    with pytest.raises(InvalidReference):
        base.with_digest("sha256:short")


# --- invalid input ----------------------------------------------------------------------------

INVALID = [
    pytest.param("Golang", id="upper-case-repository"),
    pytest.param("diamol/GoLang:1", id="upper-case-component"),
    pytest.param("", id="empty"),
    pytest.param("a//b", id="doubled-slash"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("/a", id="leading-slash"),
    pytest.param("localhost:5000/", id="registry-without-repository"),
    pytest.param("a b", id="space"),
    pytest.param(" golang", id="leading-space"),
    pytest.param("a/b@sha256:abc", id="digest-too-short"),
    pytest.param(f"a/b@{SHA}0", id="digest-too-long"),
    pytest.param("a/b@md5:" + "ab" * 16, id="digest-bad-algorithm"),
    pytest.param("a/b@sha256:" + "AB" * 32, id="digest-upper-case-hex"),
    pytest.param("a/b@", id="digest-empty"),
    pytest.param("a/b@" + "ab" * 32, id="digest-without-algorithm"),
    pytest.param("registry.local:0/a", id="port-zero"),
    pytest.param("registry.local:99999/a", id="port-too-large"),
    pytest.param("registry.local:http/a", id="port-letters"),
    pytest.param("registry.local:/a", id="port-empty"),
    pytest.param("a/b:", id="tag-empty"),
    pytest.param("a/b:-x", id="tag-leading-dash"),
    pytest.param("a/b:.x", id="tag-leading-dot"),
    pytest.param("a/b:v/1", id="tag-with-slash-is-a-bad-path"),
    pytest.param("a/b:" + "t" * 129, id="tag-too-long"),
    pytest.param("a/b:v@1", id="tag-with-at"),
    pytest.param("a-/b", id="component-ends-with-separator"),
    pytest.param("a/b...c", id="component-triple-dot"),
    pytest.param("bad_host.example:5000/a", id="host-with-underscore"),
    pytest.param("x/" + "a" * 256, id="repository-too-long"),
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_reference_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)

    assert caught.value.text == text
    assert repr(text) in str(caught.value)
    assert caught.value.reason
    assert "\n" not in str(caught.value)


def test_invalid_reference_is_a_mirror_error_and_a_value_error() -> None:
    with pytest.raises(MirrorError):
        parse_reference("UPPER")
    with pytest.raises(ValueError):
        parse_reference("UPPER")


def test_upper_case_message_says_lower_case() -> None:
    with pytest.raises(InvalidReference, match="lower case"):
        parse_reference("diamol/GoLang")


def test_longest_tag_is_accepted() -> None:
    assert parse_reference("a/b:" + "t" * 128).tag == "t" * 128


@pytest.mark.parametrize("text", ["golang:tág", "golang:v\u0663", "golang:日本"])
def test_non_ascii_tag_is_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


@pytest.mark.parametrize("text", ["[::1/a", "[a:b/c"])
def test_unbalanced_ipv6_bracket_is_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


# --- property tests ---------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum = st.text(_ALNUM, min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def components(draw: st.DrawFn) -> str:
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(_separator), draw(_alnum)]
    return "".join(parts)


@st.composite
def hosts(draw: st.DrawFn) -> str:
    label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
    kind = draw(st.sampled_from(["dotted", "port", "localhost", "ipv6", "hub"]))
    if kind == "localhost":
        host = "localhost"
    elif kind == "ipv6":
        host = draw(st.sampled_from(["[::1]", "[fe80::1]", "[2001:db8::42]"]))
    elif kind == "hub":
        return draw(st.sampled_from(["docker.io", "index.docker.io", "registry-1.docker.io"]))
    else:
        labels = draw(st.lists(label, min_size=2 if kind == "dotted" else 1, max_size=3))
        host = ".".join(labels)
    if kind == "port" or draw(st.booleans()):
        host += f":{draw(st.integers(1, 65535))}"
    return host


tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digests = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    st.binary(min_size=64, max_size=64).map(lambda b: "sha512:" + b.hex()),
)


@given(
    host=hosts(),
    path=st.lists(components(), min_size=1, max_size=4),
    tag=st.none() | tags,
    digest=st.none() | digests,
)
def test_generated_reference_parses_to_its_parts_and_round_trips(
    host: str, path: list[str], tag: str | None, digest: str | None
) -> None:
    text = f"{host}/{'/'.join(path)}"
    text += f":{tag}" if tag else ""
    text += f"@{digest}" if digest else ""

    ref = parse_reference(text)

    hub = host in ("docker.io", "index.docker.io", "registry-1.docker.io")
    expected_repo = "/".join(path)
    if hub and len(path) == 1:
        expected_repo = f"library/{expected_repo}"
    assert ref.registry == ("docker.io" if hub else host)
    assert ref.repository == expected_repo
    assert ref.tag == tag
    assert ref.digest == digest
    assert parse_reference(str(ref)) == ref


@st.composite
def undotted_components(draw: st.DrawFn) -> str:
    """A path component that cannot be mistaken for a registry host (no '.')."""
    return draw(components().filter(lambda c: "." not in c))


@given(
    first=undotted_components(),
    rest=st.lists(components(), max_size=2),
    tag=st.none() | tags,
)
def test_generated_name_without_registry_is_on_docker_hub_and_round_trips(
    first: str, rest: list[str], tag: str | None
) -> None:
    path = [first, *rest]
    text = "/".join(path) + (f":{tag}" if tag else "")

    ref = parse_reference(text)

    assert ref.registry == "docker.io"
    assert ref.repository == ("/".join(path) if rest else f"library/{first}")
    assert ref.tag == tag
    assert parse_reference(str(ref)) == ref


_REFERENCE_ALPHABET = "abcXYZ019:/@.-_[]sh256 \té"


@given(st.text() | st.text(_REFERENCE_ALPHABET, max_size=40))
@example("[")
@example("a@sha256:")
@example("[::1]:/a")
@example("localhost:99999999999999999999/a")
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        assert exc.text == text
        return
    assert parse_reference(str(ref)) == ref


# --- loopback hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "registry",
    [
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.0.0.1:5000",
        "127.1.2.3:80",
        "[::1]",
        "[::1]:5000",
    ],
)
def test_loopback_hosts(registry: str) -> None:
    assert is_loopback_host(registry)


@pytest.mark.parametrize(
    "registry",
    [
        "registry.local:5000",
        "docker.io",
        "10.0.0.1:5000",
        "localhost.example.com",
        "mylocalhost:5000",
        "[fe80::1]:5000",
        "128.0.0.1",
    ],
)
def test_remote_hosts_are_not_loopback(registry: str) -> None:
    assert not is_loopback_host(registry)


@pytest.mark.parametrize("registry", ["127.example.com", "127.0.0.1.evil.example:5000"])
def test_dns_names_starting_with_127_are_not_loopback(registry: str) -> None:
    assert not is_loopback_host(registry)


# --- digests ----------------------------------------------------------------------------------


def test_digest_of_is_sha256_of_the_bytes() -> None:
    data = b"hello, registry"
    digest = Digest.of(data)

    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digest.algorithm == "sha256"
    assert digest.hex == hashlib.sha256(data).hexdigest()
    assert Digest.parse(digest) == digest
    assert Digest.of(b"") != Digest.of(b"\0")


def test_digest_hasher_checks_streamed_content() -> None:
    data = b"x" * 1000
    hasher = Digest.of(data).hasher()
    for i in range(0, len(data), 100):
        hasher.update(data[i : i + 100])

    assert f"sha256:{hasher.hexdigest()}" == Digest.of(data)


def test_digest_is_a_str_that_serialises_as_itself() -> None:
    digest = Digest.parse(SHA)
    assert isinstance(digest, str)
    assert f"{digest}" == SHA


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "md5:" + "a" * 32,
        "SHA256:" + "a" * 64,
        "sha512:" + "a" * 64,
        ":" + "a" * 64,
    ],
)
def test_digest_parse_refuses_malformed_digests(text: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        Digest.parse(text)
    assert caught.value.text == text
