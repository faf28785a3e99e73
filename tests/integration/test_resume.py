"""Resume after a restart, against real registries and a real ``mirror sync`` process: a
large blob cut by SIGKILL half way continues, in the next run, from the bytes the target's
upload session holds (as mirror's state recorded them and the target confirms), reading the
source from there with a Range.

The source is the Hub-like registry behind the fault proxy, which stops sending the blob half
a piece past half way (a slow upstream, as in life): mirror has sent and recorded every whole
8 MiB piece before that and waits for the rest, with no request to the target open, and the
kill lands there. (A kill during a PATCH costs the session on distribution, which refuses a
session holding other bytes than its URL was issued for; the blob then starts again: see
mirror.upload.) Upstream bytes are counted twice: as the proxy served them, and from the
hub's own access log (every blob GET, its size).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from tests.integration import faultkit as kit
from tests.integration.helpers import HUB_ENV, MirrorProcess, blob_path, run_mirror
from tests.support import faults
from tests.support.images import Blob, Pusher, build_image, manifest_digest
from tests.support.proxy import RegistryProxy
from tests.support.registry import RegistryProcess, http_client
from tests.support.tokenserver import HubRegistry

MIB = 1024 * 1024
BLOB_BYTES = 256 * MIB
PIECE = 8 * MIB  # mirror.upload.JOURNALED_PIECE_BYTES
STOP_AT = BLOB_BYTES // 2 + PIECE // 2  # where the source stops sending in the first run
OCTETS = "application/octet-stream"
_LOGGED = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+)')


@pytest.fixture(scope="module")
def big_blob() -> Blob:
    """256 MiB of random bytes, as an uncompressed layer (its diff_id is its digest)."""
    data = os.urandom(BLOB_BYTES)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    return Blob(data, digest, diff_id=digest)


def push_in_pieces(hub: HubRegistry, repo: str, blob: Blob) -> None:
    """Upload a large blob to the hub in 32 MiB PATCHes: distribution takes a 256 MiB blob in
    one PUT five times slower here (13 s)."""
    token = hub.token_getter("tester")([f"repository:{repo}:pull,push"])
    headers = {"Authorization": f"Bearer {token}"}
    with http_client(timeout=60, headers=headers) as client:
        started = client.post(f"{hub.url}/v2/{repo}/blobs/uploads/")
        url = urljoin(hub.url, started.headers["location"])
        for start in range(0, blob.size, 32 * MIB):
            piece = blob.data[start : start + 32 * MIB]
            sent = client.patch(url, content=piece, headers={"Content-Type": OCTETS})
            assert sent.status_code == 202, sent.text
            url = urljoin(hub.url, sent.headers["location"])
        done = client.put(httpx.URL(url).copy_merge_params({"digest": blob.digest}))
        assert done.status_code == 201, done.text


def recorded_offset(state: Path, digest: str) -> int:
    """The bytes mirror's state says the target's session holds (0: no record yet)."""
    if not state.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(state, timeout=0.2)) as db:
            row = db.execute("SELECT offset FROM uploads WHERE digest = ?", (digest,)).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def kill_once_recorded(process: MirrorProcess, state: Path, digest: str, at_least: int) -> int:
    """SIGKILL ``process`` once its state records ``at_least`` bytes of ``digest`` on the
    target, and return the bytes recorded."""
    recorded = process.wait_for(
        f"the state to record {at_least} bytes on the target",
        lambda: (n := recorded_offset(state, digest)) >= at_least and n,
        timeout=60,
    )
    process.signal(signal.SIGKILL)
    process.kill()
    return int(recorded)


def blob_bytes_logged(registry: RegistryProcess, digest: str, since: int) -> int:
    """Body bytes of blob GETs of ``digest`` that the registry's access log records."""
    with registry.access_log_path.open("rb") as fh:
        fh.seek(since)
        lines = fh.read().decode(errors="replace").splitlines()
    return sum(
        int(m["size"])
        for line in lines
        if (m := _LOGGED.search(line))
        and m["method"] == "GET"
        and m["path"].split("?")[0].endswith(f"/blobs/{digest}")
    )


def test_a_blob_cut_by_sigkill_half_way_resumes_where_it_stopped(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    source: RegistryProxy,
    big_blob: Blob,
) -> None:
    image = build_image("docker", layers=[big_blob])
    push_in_pieces(hub, unique_repo, big_blob)
    hub_pusher.push(unique_repo, image, "big")
    stop = faults.stall_blob(big_blob.digest, after=STOP_AT, stall_s=120)
    source.add_rule(stop)
    state = tmp_path / "state.db"
    config = kit.write_config(tmp_path, source)
    config.write_text(f'state = "{state}"\n' + config.read_text())
    args = ("sync", f"{source.host}/{unique_repo}:big", "--to", local.host, "--json")
    args += ("--config", str(config))
    since = hub.log_mark()

    first = MirrorProcess(*args, home=tmp_path, env=HUB_ENV)
    half = kill_once_recorded(first, state, big_blob.digest, BLOB_BYTES // 2)
    stop.release.set()

    assert first.proc.returncode == -signal.SIGKILL
    assert manifest_digest(local.url, unique_repo, "big") is None
    second = run_mirror(*args, home=tmp_path, env=HUB_ENV, measure=True)

    assert second.code == 0, second.describe()
    assert second.peak_rss_mb < 150, f"peak RSS {second.peak_rss_mb:.0f} MB"  # two pieces at most
    assert manifest_digest(local.url, unique_repo, "big") == image.digest
    stored = blob_path(local, big_blob.digest)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == big_blob.digest.split(":")[1]
    assert second.report["bytes_resumed"] >= half  # the session went on from there
    assert recorded_offset(state, big_blob.digest) == 0  # and is forgotten once committed
    served = faults.bytes_served(source, big_blob.digest)
    logged = blob_bytes_logged(hub, big_blob.digest, since)
    overhead = max(served, logged) / BLOB_BYTES - 1
    print(
        f"\nresume: killed at {half / MIB:.0f} MiB recorded; upstream served "
        f"{served / MIB:.1f} MiB (proxy), {logged / MIB:.1f} MiB (hub access log) for a "
        f"{BLOB_BYTES / MIB:.0f} MiB blob: {overhead:+.1%}; peak RSS {second.peak_rss_mb:.0f} MB"
    )
    assert overhead <= 0.05, f"served {served}, logged {logged} for {BLOB_BYTES} bytes"
    ranged = [b for b in faults.blob_bodies(source, big_blob.digest) if b.offset]
    assert [b.offset for b in ranged] == [half]  # the source was read from where it stopped


def expire(client: httpx.Client, url: str) -> None:
    """The session expires (registries purge stale ones)."""
    assert client.delete(url).status_code == 204


def outrun(client: httpx.Client, url: str) -> None:
    """The session takes bytes after the ones recorded, as when a kill falls during a PATCH."""
    sent = client.patch(url, content=b"x" * MIB, headers={"Content-Type": OCTETS})
    assert sent.status_code == 202


@pytest.mark.parametrize("change", [expire, outrun], ids=["expired", "holds-more-than-recorded"])
def test_a_session_gone_or_not_as_recorded_starts_again_cleanly(
    change: Callable[[httpx.Client, str], None],
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    source: RegistryProxy,
) -> None:
    layer = Blob.of(os.urandom(3 * PIECE), diff_id="sha256:" + "0" * 64)
    image = build_image("docker", layers=[layer])
    hub_pusher.push(unique_repo, image, "v1")
    stop = faults.stall_blob(layer.digest, after=PIECE + PIECE // 2, stall_s=120)
    source.add_rule(stop)
    state = tmp_path / "state.db"
    config = kit.write_config(tmp_path, source)
    config.write_text(f'state = "{state}"\n' + config.read_text())
    args = ("sync", f"{source.host}/{unique_repo}:v1", "--to", local.host, "--json")
    args += ("--config", str(config))
    kill_once_recorded(MirrorProcess(*args, home=tmp_path, env=HUB_ENV), state, layer.digest, PIECE)
    stop.release.set()
    with contextlib.closing(sqlite3.connect(state)) as db:
        (url,) = db.execute("SELECT url FROM uploads").fetchone()
    with http_client() as client:
        change(client, url)

    again = run_mirror(*args, home=tmp_path, env=HUB_ENV)

    assert again.code == 0, again.describe()
    assert again.report["bytes_resumed"] == 0
    assert manifest_digest(local.url, unique_repo, "v1") == image.digest
    assert [b.offset for b in faults.blob_bodies(source, layer.digest)] == [0, 0]
    assert recorded_offset(state, layer.digest) == 0
