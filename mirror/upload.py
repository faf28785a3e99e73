"""One blob's bytes on their way into a target upload: counted, hashed and reported as they
pass (``Feed``), and, given an ``UploadJournal``, sent in recorded pieces that a later process
resumes after a restart (``send_journaled``).

Owns the journal's protocol (``mirror.state.State`` satisfies it; this module never imports
it) and how a session left by an earlier process is taken up: ask the target where it stands
(``Store.upload_status``), read the source from there with a Range, go on. Does not decide
which blobs move, mount them, or retry a failed transfer: ``mirror.transfer`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from mirror.errors import DigestMismatch, MirrorError, Unavailable
from mirror.manifest import Descriptor
from mirror.report import CopyReport, Progress
from mirror.retry import RESUMES, Sleep, resume_wait
from mirror.store import Store

# With a journal, a large blob goes up in PATCHes of about this size, each acknowledged and
# recorded before the next: a restart loses at most one. Each is held in memory while it
# downloads (times the transfers in flight).
JOURNALED_PIECE_BYTES = 8 * 1024 * 1024


class SavedUpload(Protocol):
    """An upload session a journal holds: where it is, the bytes it held, the blob's size."""

    @property
    def url(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


class UploadJournal(Protocol):
    """Where large uploads in flight are recorded, so that a later process resumes them.

    Keyed by target store name, repository and blob digest. Never raises: a journal that
    cannot write just remembers nothing.
    """

    def save_upload(
        self, target: str, repository: str, digest: str, url: str, offset: int, size: int
    ) -> None: ...
    def pending_upload(self, target: str, repository: str, digest: str) -> SavedUpload | None: ...
    def forget_upload(self, target: str, repository: str, digest: str) -> None: ...


async def send_journaled(
    source: Store,
    target: Store,
    source_repo: str,
    target_repo: str,
    blob: Descriptor,
    upload_url: str | None,
    journal: UploadJournal,
    *,
    report: CopyReport,
    progress: Progress | None,
    sleep: Sleep,
) -> None:
    """Send a large blob in acknowledged pieces, each recorded in ``journal``, continuing the
    session an earlier process left for it where the target still holds those bytes.

    Each piece (``JOURNALED_PIECE_BYTES``) is read from the source whole, then sent in one
    PATCH while the next one downloads; once answered, its end is recorded. When the source is
    the slower side (the usual case) no request to the target is open most of the time, and a
    process killed then leaves the session exactly as recorded. (distribution refuses a
    session whose bytes differ from those its URL was issued for, "upload resumed at wrong
    offset": a kill during a PATCH costs the session, and the blob starts again.) A download
    that breaks resumes at once with a Range, as within a run. A resumed blob's first bytes
    are not hashed here: the target checks the whole blob's digest before it commits it
    (``Store.finish_upload``). Two processes sending the same blob to the same repository at
    once may meet in one recorded session; the target then refuses one of them (its URL no
    longer matches the bytes held), whose tag fails for this run.
    """
    key = (target.name, target_repo, str(blob.digest))
    url, held = await _resume_point(target, key, blob, upload_url, journal, report)
    feed = Feed(blob, progress, start=held)
    resumes = 0
    try:
        while feed.received < blob.size:
            try:
                async with source.open_blob(
                    source_repo, blob.digest, offset=feed.received
                ) as chunks:
                    pieces = _Pieces(feed.take(chunks), JOURNALED_PIECE_BYTES)
                    # The next piece downloads while this one goes up (two in memory at most).
                    coming = asyncio.ensure_future(pieces.next())
                    try:
                        while piece := await coming:
                            coming = asyncio.ensure_future(pieces.next())
                            sent = held + sum(map(len, piece))
                            url, held = await target.append_upload(url, _replay(piece), held=held)
                            if held != sent:
                                raise Unavailable(
                                    f"registry {target.name}: upload of {blob.digest} holds "
                                    f"{held} bytes where {sent} were sent"
                                )
                            journal.save_upload(*key, url, held, blob.size)
                    finally:
                        if not coming.done():
                            coming.cancel()
                            with contextlib.suppress(BaseException):
                                await coming
            except Unavailable as exc:
                if held != feed.received:
                    raise  # the target side failed mid-PATCH: start again from nothing
                feed.broken = exc  # the source failed before sending a byte
            if feed.broken is None:
                break  # the source's body ended: complete, or short (``check`` says)
            resumes += 1
            if resumes > RESUMES:
                raise DownloadFailed(f"{feed.broken} (gave up after {RESUMES} resumes)") from None
            if wait := resume_wait(feed.broken, resumes):
                await sleep(wait)
        feed.check()
        await target.finish_upload(url, blob.digest)
        journal.forget_upload(*key)
    except MirrorError:
        await target.cancel_upload(url)
        journal.forget_upload(*key)
        raise
    finally:
        feed.close()


async def _resume_point(
    target: Store,
    key: tuple[str, str, str],
    blob: Descriptor,
    upload_url: str | None,
    journal: UploadJournal,
    report: CopyReport,
) -> tuple[str, int]:
    """The session to send ``blob`` into and the bytes it holds already.

    The one ``journal`` recorded, when the target still knows it and holds at least the bytes
    recorded (more: a PATCH landed whose answer was lost) and no more than the blob; otherwise
    ``upload_url`` (a mount's spare session) or a new one, recorded at 0 bytes.
    """
    saved = journal.pending_upload(*key)
    if saved is not None:
        status = None
        if saved.size == blob.size:
            with contextlib.suppress(MirrorError):
                status = await target.upload_status(saved.url)
        if status is not None and saved.offset <= status[1] <= blob.size:
            if upload_url is not None:
                await target.cancel_upload(upload_url)
            report.bytes_resumed += status[1]
            return status
        journal.forget_upload(*key)
        await target.cancel_upload(saved.url)  # expired, or not what was recorded: abandon it
    url = upload_url or await target.start_upload(key[1])
    journal.save_upload(*key, url, 0, blob.size)
    return url, 0


class _Pieces:
    """A stream of chunks cut into pieces of exactly ``size`` bytes (the last one shorter),
    so a session's recorded offsets fall on whole pieces from where it started."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        self._chunks = chunks
        self._size = size
        self._rest = b""

    async def next(self) -> list[bytes]:
        """The next piece as its chunks; empty once the stream has ended."""
        piece, have = ([self._rest], len(self._rest)) if self._rest else ([], 0)
        self._rest = b""
        while have < self._size:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                break
            piece.append(chunk)
            have += len(chunk)
        if have > self._size:
            cut = len(piece[-1]) - (have - self._size)
            piece[-1], self._rest = piece[-1][:cut], piece[-1][cut:]
        return piece


async def _replay(piece: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in piece:
        yield chunk


class Feed:
    """One blob's bytes on their way up: hashed, counted and reported as they pass, across
    however many downloads it takes."""

    def __init__(self, blob: Descriptor, progress: Progress | None, *, start: int = 0) -> None:
        """``start``: bytes the upload holds already (a resumed session); they are not hashed
        here, so only the size is checked, and the target checks the digest."""
        self.blob = blob
        self.hasher = blob.digest.hasher()
        self.received = start
        self.hashed = start == 0
        self.broken: Unavailable | None = None
        self._progress = progress
        if progress:
            progress.blob_started(blob.digest, blob.size)
            if start:
                progress.blob_advanced(blob.digest, start)

    async def take(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass ``chunks`` on; a download that breaks off ends the stream instead of failing
        it (``broken`` says why), so the upload keeps every byte that came."""
        self.broken = None
        try:
            async for chunk in chunks:
                self.add(chunk)
                yield chunk
                self.advanced(len(chunk))
        except Unavailable as exc:
            self.broken = exc

    def add(self, chunk: bytes) -> None:
        """Count and hash ``chunk``; more bytes than the descriptor says is a mismatch."""
        if self.received + len(chunk) > self.blob.size:
            raise DigestMismatch(
                f"blob {self.blob.digest}", self.blob.digest, f"more than {self.blob.size} bytes"
            )
        self.hasher.update(chunk)
        self.received += len(chunk)

    def advanced(self, nbytes: int) -> None:
        """``nbytes`` have gone up: tell the progress display."""
        if self._progress:
            self._progress.blob_advanced(self.blob.digest, nbytes)

    def check(self) -> None:
        """Raise DigestMismatch unless exactly the right bytes came."""
        actual = f"{self.blob.digest.algorithm}:{self.hasher.hexdigest()}"
        if not self.hashed:
            actual = str(self.blob.digest)  # the first bytes came in an earlier process
        if self.received != self.blob.size:
            actual = f"{self.received} bytes where the manifest says {self.blob.size}"
        if actual != self.blob.digest:
            raise DigestMismatch(f"blob {self.blob.digest}", self.blob.digest, actual)

    def close(self) -> None:
        if self._progress:
            self._progress.blob_finished(self.blob.digest)


class DownloadFailed(MirrorError):
    """A large blob's download kept breaking after every resume: that tag fails."""
