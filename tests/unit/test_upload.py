"""A large blob sent in recorded pieces, and taken up again by a later process: against a
target that keeps sessions the way distribution does (a session's URL names the bytes it was
issued for; a URL that disagrees with the bytes held is refused)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror import upload
from mirror.errors import DigestMismatch, RegistryError
from mirror.manifest import Descriptor
from mirror.reference import Digest
from mirror.report import CopyReport
from mirror.upload import send_journaled

PIECE = 1000
CHUNK = 300  # what the source yields at a time: pieces are cut across chunks


@dataclass(frozen=True)
class Saved:
    url: str
    offset: int
    size: int


class Journal:
    """An in-memory ``UploadJournal`` that keeps every save in order."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Saved] = {}
        self.saves: list[int] = []

    def save_upload(
        self, target: str, repository: str, digest: str, url: str, offset: int, size: int
    ) -> None:
        self.rows[(target, repository, digest)] = Saved(url, offset, size)
        self.saves.append(offset)

    def pending_upload(self, target: str, repository: str, digest: str) -> Saved | None:
        return self.rows.get((target, repository, digest))

    def forget_upload(self, target: str, repository: str, digest: str) -> None:
        self.rows.pop((target, repository, digest), None)

    def spool_directory(self) -> Path | None:
        return self.spool

    spool: Path | None = None


class Source:
    """Serves one blob from any offset, in CHUNK-byte chunks; records the offsets asked."""

    name = "source.test"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offsets: list[int] = []
        self.hang_after: int | None = None  # stop (forever) after sending this many bytes

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.offsets.append(offset)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(offset, len(self.data), CHUNK):
                if self.hang_after is not None and start >= self.hang_after:
                    await asyncio.Event().wait()
                yield self.data[start : start + CHUNK]

        yield chunks()


class Target:
    """Upload sessions as distribution keeps them: ``ID@OFFSET`` URLs, checked on each use."""

    name = "target.test"

    def __init__(self) -> None:
        self.sessions: dict[str, bytearray] = {}
        self.blobs: dict[str, bytes] = {}
        self.patches: list[int] = []  # bytes in each PATCH
        self.cancelled: list[str] = []
        self._ids = iter(range(1, 1000))

    def _session(self, url: str) -> tuple[str, bytearray] | None:
        uuid, _, offset = url.partition("@")
        held = self.sessions.get(uuid)
        return (uuid, held) if held is not None and len(held) == int(offset) else None

    async def start_upload(self, repository: str) -> str:
        uuid = f"u{next(self._ids)}"
        self.sessions[uuid] = bytearray()
        return f"{uuid}@0"

    async def upload_status(self, upload_url: str) -> tuple[str, int] | None:
        found = self._session(upload_url)
        return (upload_url, len(found[1])) if found else None

    async def append_upload(
        self, upload_url: str, chunks: AsyncIterable[bytes], *, held: int = 0
    ) -> tuple[str, int]:
        found = self._session(upload_url)
        assert found is not None, f"PATCH to a session that disagrees: {upload_url}"
        uuid, data = found
        before = len(data)
        async for chunk in chunks:
            data += chunk
        self.patches.append(len(data) - before)
        return f"{uuid}@{len(data)}", len(data)

    async def finish_upload(self, upload_url: str, digest: Digest) -> None:
        found = self._session(upload_url)
        assert found is not None
        if f"sha256:{hashlib.sha256(found[1]).hexdigest()}" != digest:
            raise RegistryError("digest invalid", status=400)
        self.blobs[digest] = bytes(self.sessions.pop(found[0]))

    async def cancel_upload(self, upload_url: str) -> None:
        self.cancelled.append(upload_url)
        self.sessions.pop(upload_url.partition("@")[0], None)


@pytest.fixture(autouse=True)
def _small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "JOURNALED_PIECE_BYTES", PIECE)


def blob_of(data: bytes) -> Descriptor:
    digest = Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}")
    return Descriptor("application/octet-stream", digest, len(data))


async def send(
    source: Source, target: Target, blob: Descriptor, journal: Journal, report: CopyReport
) -> None:
    async def no_sleep(seconds: float) -> None:
        return None

    await send_journaled(
        source,  # type: ignore[arg-type]
        target,  # type: ignore[arg-type]
        "src/repo",
        "dst/repo",
        blob,
        None,
        journal,
        report=report,
        progress=None,
        sleep=no_sleep,
    )


KEY = ("target.test", "dst/repo")


async def test_a_blob_goes_up_in_whole_pieces_each_recorded_then_forgotten() -> None:
    data = os.urandom(3500)
    source, target, journal, report = Source(data), Target(), Journal(), CopyReport()

    await send(source, target, blob_of(data), journal, report)

    assert target.blobs == {blob_of(data).digest: data}
    assert target.patches == [1000, 1000, 1000, 500]
    assert journal.saves == [0, 1000, 2000, 3000, 3500]
    assert journal.rows == {} and report.bytes_resumed == 0


async def test_a_later_process_goes_on_from_the_bytes_the_session_holds() -> None:
    data = os.urandom(3500)
    blob = blob_of(data)
    source, target, journal = Source(data), Target(), Journal()
    source.hang_after = 2100  # the first process stops mid-piece...
    first = asyncio.ensure_future(send(source, target, blob, journal, CopyReport()))
    while journal.saves[-1:] != [2000]:
        await asyncio.sleep(0)
    first.cancel()  # ...and dies there (a kill leaves no chance to clean up either)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert journal.pending_upload(*KEY, str(blob.digest)) is not None  # kept for a restart
    source.hang_after, source.offsets = None, []
    report = CopyReport()

    await send(source, target, blob, journal, report)

    assert source.offsets == [2000]  # no byte read twice
    assert target.blobs == {blob.digest: data}
    assert report.bytes_resumed == 2000 and journal.rows == {}


@pytest.mark.parametrize(
    "recorded",
    [
        pytest.param(lambda url, n, size: Saved("u99@1000", n, size), id="unknown-session"),
        pytest.param(lambda url, n, size: Saved(url, n, size + 1), id="other-size"),
        pytest.param(lambda url, n, size: Saved(url, n + 1000, size), id="fewer-than-recorded"),
    ],
)
async def test_a_session_that_is_gone_or_disagrees_starts_again_cleanly(recorded: object) -> None:
    data = os.urandom(2500)
    blob = blob_of(data)
    source, target, journal = Source(data), Target(), Journal()
    old = await target.start_upload("dst/repo")
    url, held = await target.append_upload(old, _once(data[:1000]))
    journal.rows[(*KEY, str(blob.digest))] = recorded(url, held, blob.size)  # type: ignore[operator]
    report = CopyReport()

    await send(source, target, blob, journal, report)

    assert source.offsets == [0] and report.bytes_resumed == 0
    assert target.blobs == {blob.digest: data}
    assert journal.rows == {}


async def test_a_failed_blob_abandons_its_session_and_its_record() -> None:
    data = os.urandom(2500)
    source, target, journal = Source(data), Target(), Journal()
    wrong = blob_of(b"x" * 2500)

    with pytest.raises(DigestMismatch):
        await send(source, target, wrong, journal, CopyReport())

    assert journal.rows == {} and target.cancelled and not target.blobs


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_pieces_are_a_32nd_of_the_blob_within_their_bounds() -> None:
    mib = 1024 * 1024
    bounds = (upload.MAX_PIECE_BYTES, 8 * mib)  # the fixture shrank the smallest
    upload.JOURNALED_PIECE_BYTES = bounds[1]
    assert upload.piece_bytes(10 * mib) == 8 * mib  # a small blob: the smallest piece
    assert upload.piece_bytes(1024 * mib) == 32 * mib  # a kill costs ~3 % of the blob
    assert upload.piece_bytes(64 * 1024 * mib) == bounds[0]  # never more on disk per piece


async def test_pieces_wait_in_the_spool_directory_or_the_systems_when_it_is_gone(
    tmp_path: Path,
) -> None:
    data = os.urandom(3500)
    for spool in (tmp_path, tmp_path / "gone"):
        source, target, journal = Source(data), Target(), Journal()
        journal.spool = spool
        await send(source, target, blob_of(data), journal, CopyReport())
        assert target.blobs == {blob_of(data).digest: data}
        assert target.patches == [1000, 1000, 1000, 500]
    assert list(tmp_path.iterdir()) == []  # nothing left behind
