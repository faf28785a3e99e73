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
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from mirror.errors import DigestMismatch, MirrorError, Unavailable
from mirror.manifest import Descriptor
from mirror.report import CopyReport, Progress
from mirror.retry import RESUMES, Sleep, resume_wait
from mirror.store import Store

# With a journal, a large blob goes up in pieces, each one PATCH acknowledged and recorded
# before the next: a restart loses at most the piece under way. A piece is about 1/32 of the
# blob, so what a kill costs stays near 3 % of it, between these bounds: every PATCH costs the
# target a resume and a sync of the session (distribution: ~35 ms), so 8 MiB pieces made a
# 1 GiB layer 1.5 times slower on one host, 32 MiB ones 1.2 times.
JOURNALED_PIECE_BYTES = 8 * 1024 * 1024  # the smallest piece
MAX_PIECE_BYTES = 64 * 1024 * 1024
PIECES_PER_BLOB = 32
# A piece waits on disk between its download and its PATCH (``Piece``): memory holds only a
# batch of this size per piece, whatever the piece's size.
SPOOL_BATCH_BYTES = 1024 * 1024

_T = TypeVar("_T")


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
    def spool_directory(self) -> Path | None:
        """Where pieces wait on disk (None: the system's temporary directory)."""
        ...


def piece_bytes(blob_size: int) -> int:
    """The size of the pieces a journaled blob of ``blob_size`` bytes goes up in."""
    return min(MAX_PIECE_BYTES, max(JOURNALED_PIECE_BYTES, blob_size // PIECES_PER_BLOB))


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

    Each piece (``piece_bytes``) is read from the source whole into a file in the journal's
    spool directory, then sent in one PATCH while the next one downloads; once answered, its end
    is recorded. When the source is the slower side (the usual case) no request to the target is
    open most of the time, and a process killed then leaves the session exactly as recorded.
    (distribution refuses a session whose bytes differ from those its URL was issued for,
    "upload resumed at wrong offset": a kill during a PATCH costs the session, and the blob
    starts again.) A download that breaks resumes at once with a Range, as within a run. A
    resumed blob's first bytes are not hashed here: the target checks the whole blob's digest
    before it commits it (``Store.finish_upload``). Two processes sending the same blob to the
    same repository at once may meet in one recorded session; the target then refuses one of
    them (its URL no longer matches the bytes held), whose tag fails for this run.
    """
    key = (target.name, target_repo, str(blob.digest))
    url, held = await _resume_point(target, key, blob, upload_url, journal, report)
    spool = journal.spool_directory()

    async def in_pieces(session: Session, chunks: AsyncIterator[bytes]) -> None:
        pieces = _Pieces(chunks, piece_bytes(blob.size), spool)
        # The next piece downloads while this one goes up (two on disk at most).
        coming = asyncio.ensure_future(pieces.next())
        try:
            while piece := await coming:
                coming = asyncio.ensure_future(pieces.next())
                with piece:
                    sent = session.held + piece.size
                    session.url, session.held = await target.append_upload(
                        session.url, piece.chunks(), held=session.held
                    )
                if session.held != sent:
                    raise Unavailable(
                        f"registry {target.name}: upload of {blob.digest} holds "
                        f"{session.held} bytes where {sent} were sent"
                    )
                journal.save_upload(*key, session.url, session.held, blob.size)
        finally:
            if not coming.done():
                coming.cancel()
            with contextlib.suppress(BaseException):
                left = await coming
                if left is not None:
                    left.close()

    try:
        await send_resuming(
            source,
            target,
            source_repo,
            blob,
            Session(url, held),
            in_pieces,
            progress=progress,
            sleep=sleep,
        )
    except MirrorError:
        journal.forget_upload(*key)
        raise
    journal.forget_upload(*key)


@dataclass(slots=True)
class Session:
    """An upload session on the target and the bytes it holds."""

    url: str
    held: int


async def send_resuming(
    source: Store,
    target: Store,
    source_repo: str,
    blob: Descriptor,
    session: Session,
    send: Callable[[Session, AsyncIterator[bytes]], Awaitable[None]],
    *,
    progress: Progress | None,
    sleep: Sleep,
) -> None:
    """Fill ``session`` with ``blob`` from the bytes it holds on, then commit it.

    ``send`` puts a download's chunks into the session, keeping ``session`` up to date as the
    target acknowledges them. When the download breaks off (a reset, a stall past the read
    timeout), the chunks end there and the rest is fetched with a Range from what the session
    holds (no byte crosses twice; a source that ignores Range is read from the start and the
    known part skipped); the first resume is immediate, then as ``resume_wait`` says, at most
    ``RESUMES`` times. The digest is checked over the whole blob (the target's check covers
    bytes an earlier process sent) before the session is committed; on any failure the session
    is abandoned, so a bad blob is never linked.
    """
    feed = Feed(blob, progress, start=session.held)
    resumes = 0
    try:
        while feed.received < blob.size:
            try:
                async with source.open_blob(
                    source_repo, blob.digest, offset=feed.received
                ) as chunks:
                    await send(session, feed.take(chunks))
            except Unavailable as exc:
                if session.held != feed.received:
                    raise  # the target side failed mid-PATCH: start again from nothing
                feed.broken = exc  # the source failed before sending a byte
            else:
                if session.held != feed.received:
                    raise Unavailable(
                        f"registry {target.name}: upload of {blob.digest} holds "
                        f"{session.held} bytes where {feed.received} were sent"
                    )
            if feed.broken is None:
                break  # the source's body ended: complete, or short (``check`` says)
            resumes += 1
            if resumes > RESUMES:
                # Not Unavailable: this level has retried already, the copier must not.
                raise DownloadFailed(f"{feed.broken} (gave up after {RESUMES} resumes)") from None
            if wait := resume_wait(feed.broken, resumes):
                await sleep(wait)
        feed.check()
        await target.finish_upload(session.url, blob.digest)
    except MirrorError:
        await target.cancel_upload(session.url)
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

    def __init__(self, chunks: AsyncIterator[bytes], size: int, spool: Path | None) -> None:
        self._chunks = chunks
        self._size = size
        self._spool = spool
        self._rest = b""

    async def next(self) -> Piece | None:
        """The next piece, on disk; None once the stream has ended."""
        piece = await asyncio.to_thread(Piece, self._spool)
        try:
            rest, self._rest = self._rest, b""
            if rest:
                await piece.add(rest)
            while piece.size < self._size:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    break
                over = piece.size + len(chunk) - self._size
                if over > 0:
                    chunk, self._rest = chunk[:-over], chunk[-over:]
                await piece.add(chunk)
        except BaseException:
            piece.close()
            raise
        if piece.size == 0:
            piece.close()
            return None
        return piece


class Piece:
    """One piece of a blob, kept in an anonymous file (gone when closed, or when the process
    dies) so that a piece of tens of MiB costs no more memory than one batch."""

    def __init__(self, directory: Path | None) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (see close)
        except OSError:  # the state's directory is gone or read-only: the system's will do
            self._file = _spooled(lambda: tempfile.TemporaryFile())  # noqa: SIM115
        self._batch: list[bytes] = []
        self._batched = 0
        self.size = 0

    async def add(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batched += len(chunk)
        self.size += len(chunk)
        if self._batched >= SPOOL_BATCH_BYTES:
            await self._flush()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The piece's bytes from its start, a batch at a time."""
        await self._flush()
        await asyncio.to_thread(self._file.seek, 0)
        while data := await asyncio.to_thread(_spooled, lambda: self._file.read(SPOOL_BATCH_BYTES)):
            yield data

    async def _flush(self) -> None:
        if self._batch:
            data = b"".join(self._batch)
            self._batch.clear()
            self._batched = 0
            await asyncio.to_thread(_spooled, lambda: self._file.write(data))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Piece:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spooled(work: Callable[[], _T]) -> _T:
    """``work`` on a piece's file, a failure of the disk (full, gone) as one mirror error."""
    try:
        return work()
    except OSError as exc:
        raise MirrorError(f"cannot keep a piece of a blob on disk: {exc.strerror or exc}") from None


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
        if self.hashed:  # a resumed blob's hash would miss its first bytes: the target checks
            self.hasher.update(chunk)
        self.received += len(chunk)

    def advanced(self, nbytes: int) -> None:
        """``nbytes`` have gone up: tell the progress display."""
        if self._progress:
            self._progress.blob_advanced(self.blob.digest, nbytes)

    def check(self) -> None:
        """Raise DigestMismatch unless exactly the right bytes came."""
        actual = str(self.blob.digest)  # a resumed blob: its first bytes came earlier
        if self.hashed:
            actual = f"{self.blob.digest.algorithm}:{self.hasher.hexdigest()}"
        if self.received != self.blob.size:
            actual = f"{self.received} bytes where the manifest says {self.blob.size}"
        if actual != self.blob.digest:
            raise DigestMismatch(f"blob {self.blob.digest}", self.blob.digest, actual)

    def close(self) -> None:
        if self._progress:
            self._progress.blob_finished(self.blob.digest)


class DownloadFailed(MirrorError):
    """A large blob's download kept breaking after every resume: that tag fails."""
