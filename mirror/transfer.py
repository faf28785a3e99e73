"""Steps 4-5 of a copy: move what the plan says is missing, then write the manifests.

Owns blob transfer (a mount from a sibling repository, else a stream from source to target,
hashed as it flows; a large blob in a session that survives a broken download and resumes
with a Range, or, given an ``UploadJournal``, in recorded pieces that survive a restart too,
``mirror.upload``; the digest checked before the upload is committed) and manifest push order
(children by digest, then the tag, read back, under per-manifest locks). Decides nothing
about what to copy: it carries out a ``mirror.plan.Plan``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

from mirror.concurrency import once
from mirror.errors import MirrorError
from mirror.manifest import Descriptor, Manifest
from mirror.plan import Plan, TargetState
from mirror.reference import Digest
from mirror.report import CopyReport, Progress
from mirror.retry import TRANSFER, RetryPolicy, Sleep
from mirror.store import Store
from mirror.upload import Feed, Session, UploadJournal, send_journaled, send_resuming

RESUMABLE_MIN_BYTES = 4 * 1024 * 1024  # smaller blobs just start again when they break


class Transfer:
    """Carries out plans from one source to one target for a whole run.

    Each blob crosses once per run however many tags and repositories need it (later ones
    mount it, or wait for the first stream and mount from there); ``concurrency`` bounds the
    transfers in flight across every tag. A transfer that fails is started again as the
    retry policy allows (``policy``), a large blob's broken download resumed in place.
    """

    def __init__(
        self,
        source: Store,
        target: Store,
        state: TargetState,
        report: CopyReport,
        *,
        concurrency: int,
        progress: Progress | None = None,
        policy: RetryPolicy = TRANSFER,
        sleep: Sleep = asyncio.sleep,
        journal: UploadJournal | None = None,
    ) -> None:
        """``journal`` records large uploads as they go, for a restart to resume them."""
        self.source = source
        self.target = target
        self.state = state
        self.report = report
        self.progress = progress
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._policy = policy
        self._sleep = sleep
        self._journal = journal
        self._blob_sent: dict[tuple[str, Digest], asyncio.Future[bool]] = {}
        self._blob_streams: dict[Digest, asyncio.Future[None]] = {}  # first stream per blob
        self._child_pushes: dict[tuple[str, Digest], asyncio.Future[None]] = {}
        self._push_locks: defaultdict[tuple[str, Digest], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def execute(
        self, plan: Plan, source_repo: str, target_repo: str, target_reference: str
    ) -> list[Descriptor]:
        """Steps 4-5 for one tag; returns the blobs planned as missing that were there."""
        assert plan.top is not None
        transfers = [
            once(
                self._blob_sent,
                (target_repo, b.digest),
                self._send_blob,
                source_repo,
                target_repo,
                b,
            )
            for b in plan.missing_blobs
        ]
        outcomes = await asyncio.gather(*transfers, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure  # cancellation: stop at once, nothing has been tagged
        if failures:
            raise failures[0]  # nothing that refers to a failed blob is pushed
        await asyncio.gather(
            *(
                once(
                    self._child_pushes,
                    (target_repo, c.digest),
                    self._put_manifest,
                    target_repo,
                    c.digest,
                    c,
                )
                for c in plan.children
            )
        )
        await self._put_manifest(target_repo, target_reference, plan.top, read_back=True)
        return [b for b, sent in zip(plan.missing_blobs, outcomes, strict=True) if sent is False]

    async def keep_backup(self, repo: str, backup_tag: str, digest: Digest) -> None:
        """Put the manifest ``digest`` of the target's ``repo`` under ``backup_tag`` as well,
        before the tag that points there moves: read from the target itself (no upstream pull),
        written back byte for byte. Raises when it cannot be kept: the tag must not move then."""
        try:
            manifest = await self.target.get_manifest(repo, str(digest), expected=digest)
            await self._put_manifest(repo, backup_tag, manifest, read_back=True)
        except MirrorError as exc:
            raise MirrorError(
                f"backup of {digest} as {repo}:{backup_tag} failed, so the tag was not moved: {exc}"
            ) from None

    async def _put_manifest(
        self, repo: str, reference: str, manifest: Manifest, *, read_back: bool = False
    ) -> None:
        """PUT a manifest; PUTs in one repository that touch the same manifest go one at a time.

        distribution rewrites a repository's link to a manifest on every PUT of it (truncate,
        then write), so a read of that link meanwhile finds it empty and answers 500 "invalid
        checksum digest format": an index PUT checking its children, or a HEAD of an alias
        tag (seen). Each PUT therefore holds a lock per manifest it writes or reads (itself,
        and an index's children), taken in one order; PUTs of unrelated manifests go side by
        side (a 12-tag first sync spent its last 130 ms in a queue of one at a time).
        ``read_back`` reads the tag back, still under the locks: a registry can accept a PUT
        and still not serve it (distribution killed mid-write leaves an empty manifest file
        that a later PUT links again).
        """
        touched = {manifest.digest, *(child.digest for child in manifest.children)}
        async with contextlib.AsyncExitStack() as held:
            for digest in sorted(touched, key=str):
                await held.enter_async_context(self._push_locks[(repo, digest)])
            await self.target.put_manifest(repo, reference, manifest)
            written = await self.target.head_manifest(repo, reference) if read_back else None
        self.report.manifests_pushed += 1
        self.state.holds_manifest(repo, manifest.digest)
        if read_back and (written is None or written.digest != manifest.digest):
            raise MirrorError(
                f"registry {self.target.name}: {repo}:{reference} was written but does not "
                f"serve {manifest.digest} (it answers "
                f"{written.digest if written else 'not found'})"
            )

    async def _send_blob(self, source_repo: str, target_repo: str, blob: Descriptor) -> bool:
        """Mount the blob from a sibling repository if one holds it, else stream it across.
        False when a tagless repository turned out to hold it already (see ``tagless``).

        When another repository's stream of the same blob is under way, wait for it and mount
        from there: shared layers cross the network once per run.
        """
        first = self._blob_streams.get(blob.digest)
        if first is not None:
            await asyncio.wait([first])
        else:
            self._blob_streams[blob.digest] = asyncio.get_running_loop().create_future()
        try:
            async with self._slots:
                upload_url = None
                home = self.state.blob_homes.get(blob.digest)
                if home is None and target_repo in self.state.tagless:
                    home = target_repo  # the repository itself is asked (see ``tagless``)
                if home is not None:
                    mount = await self.target.mount_blob(target_repo, blob.digest, home)
                    upload_url = mount.upload_url
                    if mount.mounted or (
                        home == target_repo
                        and upload_url is None  # refused outright: a HEAD tells instead
                        and await self.target.blob_exists(target_repo, blob.digest)
                    ):
                        self.state.holds_blob(target_repo, blob.digest)
                        if home == target_repo:
                            self.report.blobs_present += 1
                            return False
                        self.report.blobs_mounted += 1
                        return True

                async def attempt() -> None:
                    nonlocal upload_url
                    try:
                        await self._stream_blob(source_repo, target_repo, blob, upload_url)
                    finally:
                        upload_url = None  # a failed session is not reused

                await self._policy.run(attempt, sleep=self._sleep)
                self.state.holds_blob(target_repo, blob.digest)
                self.report.blobs_copied += 1
                self.report.bytes_copied += blob.size
                return True
        finally:
            if first is None:
                self._blob_streams[blob.digest].set_result(None)

    async def _stream_blob(
        self, source_repo: str, target_repo: str, blob: Descriptor, upload_url: str | None
    ) -> None:
        """Step 4 for one blob. Small blobs go in one PUT with their Content-Length (a broken
        one simply starts again); large ones in a session that survives a broken download."""
        if blob.size >= RESUMABLE_MIN_BYTES and self._journal is not None:
            await send_journaled(
                self.source,
                self.target,
                source_repo,
                target_repo,
                blob,
                upload_url,
                self._journal,
                report=self.report,
                progress=self.progress,
                sleep=self._sleep,
            )
            return
        if blob.size >= RESUMABLE_MIN_BYTES:
            await self._resumable_copy(source_repo, target_repo, blob, upload_url)
            return
        async with self.source.open_blob(source_repo, blob.digest) as chunks:
            await self.target.upload_blob(
                target_repo,
                blob.digest,
                blob.size,
                self._verified(chunks, blob),
                upload_url=upload_url,
            )

    async def _resumable_copy(
        self, source_repo: str, target_repo: str, blob: Descriptor, upload_url: str | None
    ) -> None:
        """Stream a large blob into one upload session, resuming a broken download: the bytes
        go up in a chunked PATCH as they arrive, and a PATCH a broken download ends keeps what
        arrived (``send_resuming`` fetches the rest)."""
        url = upload_url or await self.target.start_upload(target_repo)

        async def streamed(session: Session, chunks: AsyncIterator[bytes]) -> None:
            session.url, session.held = await self.target.append_upload(
                session.url, chunks, held=session.held
            )

        await send_resuming(
            self.source,
            self.target,
            source_repo,
            blob,
            Session(url, 0),
            streamed,
            progress=self.progress,
            sleep=self._sleep,
        )

    async def _verified(
        self, chunks: AsyncIterator[bytes], blob: Descriptor
    ) -> AsyncIterator[bytes]:
        """Pass chunks through, hashing them; the last chunk is held back until the digest and
        size are known good, so a bad blob never completes its upload."""
        feed = Feed(blob, self.progress)
        held: bytes | None = None
        try:
            async for chunk in chunks:
                feed.add(chunk)
                if held is not None:
                    yield held
                    feed.advanced(len(held))
                held = chunk
            feed.check()
            if held is not None:
                yield held
                feed.advanced(len(held))
        finally:
            feed.close()
