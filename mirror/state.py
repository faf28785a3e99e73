"""The record mirror keeps between runs: a SQLite database of runs, tags and uploads in flight.

Owns where the database lives (``default_path``), its schema and migrations, and the few
questions asked of it: what each run did, what each tag pointed at and when it changed, which
tags mirror itself wrote (the only ones prune may touch), and the upload sessions a restart can
resume. Never a gate on correctness: a database that is locked, corrupt, or on a read-only disk
costs one warning and the run copies as well without it (``State.problem`` says why). A corrupt
file is set aside under a new name, never overwritten. Does not copy, decide or print.

The daemon and a concurrent ``mirror sync`` share one file: WAL journal, a busy timeout, and
every write is one short transaction.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

FILENAME = "state.db"
IMAGE_STATE_DIR = Path("/var/lib/mirror")  # the container image's and root's default
_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 3_000  # a concurrent writer holds the lock for one short transaction

# Migrations, in order: the database's ``user_version`` is how many have run. Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT,              -- success | partial | failed; NULL while running
        tags_checked INTEGER NOT NULL DEFAULT 0,
        tags_copied INTEGER NOT NULL DEFAULT 0,
        tags_skipped INTEGER NOT NULL DEFAULT 0,
        tags_failed INTEGER NOT NULL DEFAULT 0,
        tags_deferred INTEGER NOT NULL DEFAULT 0,
        blobs_copied INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        pulls INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX runs_job ON runs (job, started);
    CREATE TABLE tags (
        target TEXT NOT NULL,      -- the target registry (or store) name
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        job TEXT NOT NULL,
        source TEXT NOT NULL,      -- registry/repository:tag it is copied from
        source_digest TEXT,
        target_digest TEXT,        -- what the target tag points at, as last seen
        status TEXT NOT NULL,      -- copied | skipped | failed | deferred
        checked REAL NOT NULL,
        changed REAL,              -- when target_digest last changed
        behind_since REAL,         -- first failed/deferred check since it was last in sync
        written_digest TEXT,       -- the digest mirror itself last wrote under this tag
        written REAL,
        missing_since REAL,        -- first seen gone upstream or unselected (prune's grace)
        missing_reason TEXT,       -- deleted | unselected; NULL while upstream selects it
        bytes INTEGER NOT NULL DEFAULT 0,
        pulls INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        run INTEGER,
        PRIMARY KEY (target, repository, tag)
    );
    CREATE INDEX tags_job ON tags (job);
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        at REAL NOT NULL,
        old_digest TEXT,
        new_digest TEXT,           -- NULL: the tag was deleted (pruned)
        run INTEGER
    );
    CREATE INDEX changes_tag ON changes (target, repository, tag, at);
    CREATE TABLE uploads (
        target TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        url TEXT NOT NULL,         -- the upload session's location on the target
        offset INTEGER NOT NULL,   -- bytes the session holds
        size INTEGER NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (target, repository, digest)
    );
    """,
    # 2: which process a run is, so that one killed mid-run reads as interrupted, not running.
    """
    ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    """,
)


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the database lives unless the config's ``state`` says otherwise.

    ``$STATE_DIRECTORY`` under systemd (``StateDirectory=mirror``; the first of a colon list),
    ``/var/lib/mirror`` for root (and in the container image), else the user's XDG state
    directory (``$XDG_STATE_HOME/mirror``, by default ``~/.local/state/mirror``).
    """
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0]) / FILENAME
    if os.geteuid() == 0:
        return IMAGE_STATE_DIR / FILENAME
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(base).expanduser() / "mirror" / FILENAME


def resolve_path(setting: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The database file: the config's ``state`` (``~`` expanded), else ``default_path``."""
    return Path(setting).expanduser() if setting else default_path(environ)


@dataclass(frozen=True, slots=True)
class TagRecord:
    """One tag a run checked, as the state keeps it (see ``State.record_tags``)."""

    target: str
    repository: str
    tag: str
    source: str
    status: str  # copied | skipped | failed | deferred
    source_digest: str | None = None
    target_digest: str | None = None  # what the tag points at now (None: unknown/absent)
    previous: str | None = None  # what it pointed at before the run (None: unknown/absent)
    bytes: int = 0
    pulls: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload session a run left open on the target, and the bytes it holds."""

    url: str
    offset: int
    size: int
    updated: float


class State:
    """The database, or nothing when it cannot be used (``problem`` says why, once).

    Every method works either way: writes are dropped and reads answer empty when the
    database is unavailable or a write fails (then ``problem`` is set and ``warn`` told).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        warn: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating and migrating) the database at ``path``; None keeps no state."""
        self.path = path
        self.problem: str | None = None
        self._warn = warn
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = self._open(path)

    @property
    def available(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- runs -----------------------------------------------------------------------------

    def start_run(self, job: str) -> int | None:
        """Record that a run of ``job`` began; its id, for ``finish_run`` (None: no state)."""
        row = (job, self._clock(), socket.gethostname(), os.getpid())
        return self._write(
            lambda db: (
                db.execute(
                    "INSERT INTO runs (job, started, host, pid) VALUES (?, ?, ?, ?)", row
                ).lastrowid
            )
        )

    def finish_run(
        self, run: int | None, outcome: str, counts: Mapping[str, int], error: str | None
    ) -> None:
        """Record how run ``run`` ended; ``counts`` keys are the ``runs`` columns."""
        if run is None:
            return
        columns = [c for c in _RUN_COUNTS if c in counts]
        assignments = "".join(f", {c} = ?" for c in columns)
        values = (self._clock(), outcome, error, *(counts[c] for c in columns), run)
        self._write(
            lambda db: db.execute(
                f"UPDATE runs SET finished = ?, outcome = ?, error = ?{assignments} WHERE id = ?",
                values,
            )
        )

    def runs(self, job: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first (of one job, or of all)."""
        where, args = ("WHERE job = ?", (job,)) if job else ("", ())
        rows = self._read(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_interrupted(row) for row in rows]

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """Each job's latest run, and its latest successful one's end as ``last_success``."""
        rows = self._read(
            "SELECT r.*, (SELECT MAX(finished) FROM runs s WHERE s.job = r.job"
            " AND s.outcome = 'success') AS last_success"
            " FROM runs r WHERE r.id = (SELECT MAX(id) FROM runs t WHERE t.job = r.job)"
        )
        return {row["job"]: _interrupted(row) for row in rows}

    # -- tags -----------------------------------------------------------------------------

    def record_tags(self, run: int | None, job: str, records: Iterable[TagRecord]) -> None:
        """Record what a run found for each tag; a changed target digest is one history row.

        A tag mirror copied is marked as written by mirror with its digest (prune touches only
        those, and only while the target still points there). Dry runs are not recorded.
        """
        now = self._clock()
        records = list(records)

        def write(db: sqlite3.Connection) -> None:
            for r in records:
                old = db.execute(
                    "SELECT target_digest, behind_since, written_digest, written, changed"
                    " FROM tags WHERE target = ? AND repository = ? AND tag = ?",
                    (r.target, r.repository, r.tag),
                ).fetchone()
                known = old[0] if old else None
                changed = old[4] if old else None
                in_step = r.status in ("copied", "skipped")
                behind_since = None if in_step else (old[1] if old and old[1] else now)
                written_digest, written = (old[2], old[3]) if old else (None, None)
                if r.status == "copied":
                    written_digest, written = r.target_digest, now
                # What the target held before this run differs from what was last seen: it
                # was pushed or re-pointed by someone else in between; that is history too.
                for new in (r.previous, r.target_digest):
                    if new is not None and new != known:
                        db.execute(
                            "INSERT INTO changes (target, repository, tag, at, old_digest,"
                            " new_digest, run) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (r.target, r.repository, r.tag, now, known, new, run),
                        )
                        known, changed = new, now
                db.execute(
                    "INSERT OR REPLACE INTO tags (target, repository, tag, job, source,"
                    " source_digest, target_digest, status, checked, changed, behind_since,"
                    " written_digest, written, bytes, pulls, error, run)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.target,
                        r.repository,
                        r.tag,
                        job,
                        r.source,
                        r.source_digest,
                        known,
                        r.status,
                        now,
                        changed,
                        behind_since,
                        written_digest,
                        written,
                        r.bytes,
                        r.pulls,
                        r.error,
                        run,
                    ),
                )

        self._write(write)

    def tags(self, job: str | None = None) -> list[dict[str, Any]]:
        """The last known state of every tag (of one job, or of all)."""
        where, args = ("WHERE job = ?", (job,)) if job else ("", ())
        return self._read(f"SELECT * FROM tags {where} ORDER BY target, repository, tag", args)

    def unsupported_digests(self) -> dict[str, str]:
        """The source digests whose tags were last left on purpose (``unsupported``), with why."""
        rows = self._read(
            "SELECT source_digest, error FROM tags"
            " WHERE status = 'unsupported' AND source_digest IS NOT NULL"
        )
        return {row["source_digest"]: row["error"] or "left on purpose" for row in rows}

    def history(self, target: str, repository: str, tag: str) -> list[dict[str, Any]]:
        """Every digest change of one tag, oldest first."""
        return self._read(
            "SELECT at, old_digest, new_digest, run FROM changes"
            " WHERE target = ? AND repository = ? AND tag = ? ORDER BY at, id",
            (target, repository, tag),
        )

    def tag_summary(self) -> dict[str, dict[str, Any]]:
        """Per job: how many tags its last check found in each status (``copied``, ``skipped``,
        ``failed``, ``deferred``), how many upstream no longer selects (``missing``), and since
        when the oldest tag not in step has been so (``behind_since``)."""
        rows = self._read(
            "SELECT job, status, COUNT(*) AS n, MIN(behind_since) AS behind_since,"
            " SUM(missing_since IS NOT NULL) AS missing FROM tags GROUP BY job, status"
        )
        summary: dict[str, dict[str, Any]] = {}
        for row in rows:
            job = summary.setdefault(row["job"], {"missing": 0, "behind_since": None})
            job[row["status"]] = row["n"]
            job["missing"] += row["missing"] or 0
            since = row["behind_since"]
            if since is not None and (job["behind_since"] is None or since < job["behind_since"]):
                job["behind_since"] = since
        return summary

    def tag(self, target: str, repository: str, tag: str) -> dict[str, Any] | None:
        """One tag's last known state, or None when mirror has no record of it."""
        rows = self._read(
            "SELECT * FROM tags WHERE target = ? AND repository = ? AND tag = ?",
            (target, repository, tag),
        )
        return rows[0] if rows else None

    def tags_from(self, source: str) -> list[dict[str, Any]]:
        """The tags copied from ``source`` (``registry/repository:tag``), on every target."""
        return self._read(
            "SELECT * FROM tags WHERE source = ? ORDER BY target, repository, tag", (source,)
        )

    def mark_missing(self, target: str, repository: str, tag: str, reason: str) -> float | None:
        """Note that upstream no longer has (``deleted``) or the rules no longer select
        (``unselected``) this tag; when that was first seen (prune's grace runs from there)."""

        def write(db: sqlite3.Connection) -> float | None:
            db.execute(
                "UPDATE tags SET missing_since = COALESCE(missing_since, ?), missing_reason = ?"
                " WHERE target = ? AND repository = ? AND tag = ?",
                (self._clock(), reason, target, repository, tag),
            )
            row = db.execute(
                "SELECT missing_since FROM tags WHERE target = ? AND repository = ? AND tag = ?",
                (target, repository, tag),
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return self._write(write)

    def clear_missing(self, target: str, repository: str, tag: str) -> None:
        """Upstream selects the tag again: its grace period starts over if it goes again."""
        self._write(
            lambda db: db.execute(
                "UPDATE tags SET missing_since = NULL, missing_reason = NULL"
                " WHERE target = ? AND repository = ? AND tag = ? AND missing_since IS NOT NULL",
                (target, repository, tag),
            )
        )

    def record_pruned(self, target: str, repository: str, tag: str, digest: str) -> None:
        """Prune deleted the tag (it pointed at ``digest``): one history row, no tag record."""
        at = self._clock()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO changes (target, repository, tag, at, old_digest, new_digest)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (target, repository, tag, at, digest),
            )
            db.execute(
                "DELETE FROM tags WHERE target = ? AND repository = ? AND tag = ?",
                (target, repository, tag),
            )

        self._write(write)

    def forget_tag(self, target: str, repository: str, tag: str) -> None:
        """Drop a tag's record (it was pruned); its history stays."""
        self._write(
            lambda db: db.execute(
                "DELETE FROM tags WHERE target = ? AND repository = ? AND tag = ?",
                (target, repository, tag),
            )
        )

    # -- uploads in flight ------------------------------------------------------------------

    def save_upload(
        self, target: str, repository: str, digest: str, url: str, offset: int, size: int
    ) -> None:
        """Remember an open upload session and the bytes it holds, for a restart to resume."""
        row = (target, repository, digest, url, offset, size, self._clock())
        self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)", row
            )
        )

    def pending_upload(self, target: str, repository: str, digest: str) -> PendingUpload | None:
        rows = self._read(
            "SELECT url, offset, size, updated FROM uploads"
            " WHERE target = ? AND repository = ? AND digest = ?",
            (target, repository, digest),
        )
        return PendingUpload(**rows[0]) if rows else None

    def forget_upload(self, target: str, repository: str, digest: str) -> None:
        self._write(
            lambda db: db.execute(
                "DELETE FROM uploads WHERE target = ? AND repository = ? AND digest = ?",
                (target, repository, digest),
            )
        )

    def spool_directory(self) -> Path | None:
        """The database's directory, where large uploads spool their pieces (a volume that
        outlives the process, unlike a tmpfs /tmp); None without a database."""
        return self.path.parent if self._db is not None and self.path is not None else None

    # -- the database itself ----------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect(path)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                self._unavailable(f"state {path}: {_why(exc)}; running without it")
                return None
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                for suffix in ("", "-wal", "-shm"):
                    extra = Path(f"{path}{suffix}")
                    if extra.exists():
                        extra.rename(f"{aside}{suffix}")
                db = self._connect(path)
            except (OSError, sqlite3.Error) as again:
                self._unavailable(f"state {path} is corrupt ({_why(again)}); running without it")
                return None
            self._tell(f"state {path} was corrupt: set aside as {aside.name}, starting a new one")
        except OSError as exc:
            self._unavailable(f"state {path}: {exc.strerror or exc}; running without it")
            return None
        return db

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            _migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T | None:
        """Run ``work`` in one short transaction; its result, or None without a database.

        A failure costs a warning, never the run: a lock held past the busy timeout drops
        this write only; anything else (read-only disk, I/O error) drops the state for the
        rest of the process.
        """
        db = self._db
        if db is None:
            return None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                self._tell(f"state {self.path}: {_why(exc)}; this record is dropped")
            else:
                self._unavailable(f"state {self.path}: {_why(exc)}; recording no more")
                self.close()
            return None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if self._db is None:
            return []
        try:
            return [dict(row) for row in self._db.execute(sql, args)]
        except sqlite3.Error as exc:
            self._unavailable(f"state {self.path}: {_why(exc)}")
            return []

    def _unavailable(self, line: str) -> None:
        self.problem = line
        self._tell(line)

    def _tell(self, line: str) -> None:
        self._warn(line)


_RUN_COUNTS = (
    "tags_checked",
    "tags_copied",
    "tags_skipped",
    "tags_failed",
    "tags_deferred",
    "blobs_copied",
    "bytes",
    "pulls",
)


def _interrupted(run: dict[str, Any]) -> dict[str, Any]:
    """A run without an outcome whose process is gone (killed, or the machine rebooted) as
    ``interrupted``; one still running, or of another host (unknown), is left as it is."""
    if run["outcome"] is None and run.get("pid") and run.get("host") == socket.gethostname():
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return {**run, "outcome": "interrupted"}
        except OSError:
            pass  # another user's process: alive
    return run


def _migrate(db: sqlite3.Connection) -> None:
    """Run the migrations this database has not had, in one transaction.

    The version is read under the write lock: two processes opening a new file at once (the
    daemon and a ``mirror sync``) must not both create its tables.
    """
    if db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
        return  # the usual case: no lock taken
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this mirror knows ({len(MIGRATIONS)})"
            )
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script``, one at a time (``executescript`` would commit the
    transaction that holds the lock)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc)
    return "not a database" in text or "malformed" in text


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
