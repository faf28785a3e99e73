"""Files written so that no reader ever sees half of one: a temporary name in the same
directory, fsync, then rename (and the directory fsynced, so the rename survives a crash).

Owns the blocking file work of an OCI image layout, run off the event loop in batches
(``asyncio.to_thread``, one hop per MiB rather than per network chunk), a blob checked
against its digest before it takes its name, hard links with a copy where the file system
has none (FAT and exFAT sticks), and turning an ``OSError`` into a ``LayoutError`` that
names the path. Knows nothing of layouts, indexes or references.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from mirror.errors import DigestMismatch, LayoutError
from mirror.reference import Digest

BATCH_BYTES = 1024 * 1024  # bytes gathered before one thread hop writes (or reads) them
TEMP_SUFFIX = ".tmp"  # with a leading dot: readers listing a directory skip them


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside ``final``: same directory, so the rename is atomic."""
    return final.parent / f".{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def failure(action: str, path: Path, exc: OSError) -> LayoutError:
    """One line naming what could not be done to which path, and the system's reason."""
    return LayoutError(f"cannot {action} {path}: {exc.strerror or exc}")


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one.

    Blocking: call it with ``asyncio.to_thread``. The temporary file is gone whatever fails.
    """
    _write_then_rename(path, lambda fh: fh.write(data), "write")


def _write_then_rename(path: Path, fill: Callable[[BinaryIO], object], action: str) -> None:
    """Fill a temporary file beside ``path`` with ``fill``, fsync it and rename it to ``path``
    (then fsync the directory); the temporary file is gone whatever fails."""
    temp = temp_path(path)
    try:
        with open(temp, "xb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise failure(action, path, exc) from None
    fsync_directory(path.parent)


def link_or_copy(source: Path, target: Path) -> None:
    """Give ``target`` the content of ``source``: a hard link (stored once), else a copy made
    under a temporary name. Blocking; a ``target`` already there is left alone."""
    if target.exists():
        return
    try:
        os.link(source, target)
    except FileExistsError:
        return
    except OSError:  # EXDEV, EPERM, EMLINK, no links on FAT: copy instead

        def copy(dst: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, dst, BATCH_BYTES)

        _write_then_rename(target, copy, "copy a blob to")
        return
    fsync_directory(target.parent)


def read_capped(path: Path, cap: int) -> bytes | None:
    """The bytes of a small file (at most ``cap`` + 1 are read); None when it is missing."""
    try:
        with open(path, "rb") as fh:
            return fh.read(cap + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise failure("read", path, exc) from None


async def read_chunks(fh: BinaryIO, path: Path) -> AsyncIterator[bytes]:
    """An open file's bytes from where it stands, a MiB per thread hop."""
    while True:
        try:
            chunk = await asyncio.to_thread(fh.read, BATCH_BYTES)
        except OSError as exc:
            raise failure("read", path, exc) from None
        if not chunk:
            return
        yield chunk


class BlobWriter:
    """One blob on its way into ``directory``: written under a temporary name in batches,
    hashed (sha256) as it goes, then committed under its digest or discarded. The blob's
    final name never holds part of it.

    ``discard`` is synchronous, so a cancelled copy can clean up in a ``finally``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.temp = temp_path(directory / "upload")
        self.written = 0
        self._hasher = hashlib.sha256()
        self._file: BinaryIO | None = None

    async def open(self) -> None:
        def create() -> None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self.temp, "xb")  # noqa: SIM115 (closed by commit/discard)
            except OSError as exc:
                raise failure("create", self.temp, exc) from None

        await asyncio.to_thread(create)

    async def write(self, chunks: AsyncIterable[bytes]) -> None:
        """Append ``chunks``; never more than one batch is held in memory."""
        batch = bytearray()
        async for chunk in chunks:
            batch += chunk
            if len(batch) >= BATCH_BYTES:
                data = bytes(batch)
                batch.clear()
                await asyncio.to_thread(self._write, data)
        if batch:
            await asyncio.to_thread(self._write, bytes(batch))

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            raise failure("write", self.temp, exc) from None
        self._hasher.update(data)
        self.written += len(data)

    async def commit(self, final: Path, digest: Digest, size: int | None = None) -> None:
        """Give the blob the name ``final`` once its size and digest check out; else discard
        it and raise DigestMismatch. A blob that arrived there meanwhile is kept as it is."""
        actual = f"sha256:{self._hasher.hexdigest()}"
        if size is not None and self.written != size:
            actual = f"{self.written} bytes where the manifest says {size}"
        if actual != digest:
            self.discard()
            raise DigestMismatch(f"blob {final}", digest, actual)

        def finish() -> None:
            assert self._file is not None
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                if final.exists():
                    self.temp.unlink()
                else:
                    os.replace(self.temp, final)
            except OSError as exc:
                self.discard()
                raise failure("write", final, exc) from None
            fsync_directory(final.parent)

        try:
            await asyncio.to_thread(finish)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temporary file (best effort)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):
            self.temp.unlink()
