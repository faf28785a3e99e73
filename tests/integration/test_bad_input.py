"""Bad data from upstream: each is a failed tag (or, when the repository itself cannot be
read, one failed result) with a one-line message naming the problem, exit code 1, never a
traceback, and the target left as it was.

The data comes from a fault proxy in front of the real Hub-like registry
(``tests.support.faults``) or from the test token server; the target is checked
independently afterwards (``faultkit.check_target``), and every run's output is searched
for the Hub password and issued tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import faultkit as kit
from tests.integration.helpers import Run, writes
from tests.support import faults
from tests.support.images import DOCKER_MANIFEST, Image, Pusher
from tests.support.proxy import RegistryProxy
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's cap, and mirror's


@pytest.fixture
def two_tags(hub_pusher: Pusher, unique_repo: str) -> dict[str, Image]:
    """``good`` and ``bad`` on the hub; tests make ``bad`` arrive broken."""
    return kit.push_small(hub_pusher, unique_repo, ("good", "bad"))


def only_bad_failed(run: Run, local: RegistryProcess, repo: str, images: dict[str, Image]) -> str:
    """The run failed ``bad`` alone, in one line on stderr, and copied ``good``; the target
    holds ``good`` intact and nothing under ``bad``. Returns the error line."""
    assert run.code == 1, run.describe()
    assert run.statuses() == {"good": "copied", "bad": "failed"}, run.describe()
    (line,) = kit.one_line_errors(run, 1)
    assert ":bad: " in line
    found = kit.check_target(local, repo, before={}, upstream=images)
    assert found == {"good": images["good"].digest}
    return line


def test_a_manifest_that_is_not_json_fails_its_tag(
    tmp_path: Path,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    page = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"
    fake = faults.FakeManifest(unique_repo, "bad", page, DOCKER_MANIFEST)
    source.add_rule(fake)

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    line = only_bad_failed(run, local, unique_repo, two_tags)
    assert "not JSON" in line and fake.digest in line
    assert fake.gets == 1  # read once, judged, not retried


def test_a_manifest_over_4_mib_fails_its_tag_without_being_read(
    tmp_path: Path,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    document = json.loads(two_tags["bad"].raw)
    document["annotations"] = {"padding": "x" * (MAX_MANIFEST_BYTES + 1000)}
    huge = json.dumps(document).encode()
    fake = faults.FakeManifest(unique_repo, "bad", huge, DOCKER_MANIFEST)
    source.add_rule(fake)

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    line = only_bad_failed(run, local, unique_repo, two_tags)
    assert str(MAX_MANIFEST_BYTES) in line and "cap" in line
    (served,) = [s for s in source.served() if s.request.ref == fake.digest]
    assert served.outcome == "client-gone" or served.body_bytes < len(huge)


def test_a_manifest_whose_bytes_do_not_match_its_digest_fails_its_tag(
    tmp_path: Path,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    real = two_tags["bad"]
    other = json.dumps(json.loads(real.raw)).encode()  # same document, other bytes
    swap = faults.SwapManifest(unique_repo, real.digest, other, DOCKER_MANIFEST)
    source.add_rule(swap)

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    line = only_bad_failed(run, local, unique_repo, two_tags)
    assert "digest mismatch" in line and real.digest in line
    assert swap.gets >= 1


def test_a_tags_list_that_is_not_json_fails_the_repository(
    tmp_path: Path,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    source.add_rule(faults.TagsNotJson(unique_repo))
    since = local.log_mark()

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    assert run.code == 1, run.describe()
    assert run.report["tags_failed"] == 1 and run.report["tags_copied"] == 0
    (line,) = kit.one_line_errors(run, 1)
    assert "tags list" in line and "not valid JSON" in line and unique_repo in line
    assert writes(local, since) == []
    assert kit.check_target(local, unique_repo, before={}, upstream=two_tags) == {}


def test_a_token_endpoint_answering_html_is_one_line_and_nothing_is_written(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    secrets: kit.Secrets,
) -> None:
    hub.token_server.answer_html = True
    since = local.log_mark()

    run = kit.sync(tmp_path, hub, unique_repo, local, secrets)

    assert run.code == 1, run.describe()
    (line,) = kit.one_line_errors(run, 1)
    assert "token endpoint" in line and hub.token_server.realm in line and "JSON" in line
    assert hub.token_server.requests(), "the token endpoint was never asked"
    assert writes(local, since) == []
    assert kit.check_target(local, unique_repo, before={}, upstream=two_tags) == {}


def test_an_error_body_of_a_gigabyte_is_cut_short_in_little_time_and_memory(
    tmp_path: Path,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    flood = faults.HugeError(
        faults.is_manifest("GET", unique_repo, two_tags["bad"].digest), status=400, size=1024**3
    )
    source.add_rule(flood)

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    line = only_bad_failed(run, local, unique_repo, two_tags)
    assert "HTTP 400" in line and len(line) < 1000
    assert flood.hits >= 1
    pages = [s for s in source.served() if s.status == 400]
    assert pages and all(p.outcome == "client-gone" for p in pages)
    assert sum(p.body_bytes for p in pages) < 64 * kit.MIB  # of a GiB each
    assert run.seconds < 10.0  # reading it whole would take seconds more, and a GiB of memory
    assert run.peak_rss_mb < 150, f"peak RSS {run.peak_rss_mb:.0f} MB"


def test_a_tags_link_to_another_host_is_refused_and_never_followed(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    unique_repo: str,
    two_tags: dict[str, Image],
    source: RegistryProxy,
    make_proxy: Callable[..., RegistryProxy],
    secrets: kit.Secrets,
) -> None:
    elsewhere = make_proxy(hub.url)  # a host that records whoever comes
    source.add_rule(
        faults.ForeignLink(unique_repo, f"{elsewhere.url}/v2/{unique_repo}/tags/list?last=bad")
    )
    since = local.log_mark()

    run = kit.sync(tmp_path, source, unique_repo, local, secrets)

    assert run.code == 1, run.describe()
    (line,) = kit.one_line_errors(run, 1)
    assert "Link" in line and elsewhere.host in line and "refus" in line
    assert elsewhere.requests() == []  # not followed, so no credentials went there either
    assert writes(local, since) == []
    assert kit.check_target(local, unique_repo, before={}, upstream=two_tags) == {}
