"""What the state says, for people and programs: ``mirror status``, ``mirror history`` and the
daemon's ``GET /status``.

Owns turning the state's rows into the status and history documents (JSON-ready dicts, times
in UTC ISO 8601), their text rendering, and the two commands' exit statuses. Does not write
the state, copy, or schedule: the daemon passes in its next run times, the CLI estimates them
from each entry's schedule.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mirror.config import Config, MirrorEntry, config_path, load_config
from mirror.errors import ConfigError, InvalidReference
from mirror.output import error, iso, size, warning
from mirror.reference import parse_reference
from mirror.state import State, resolve_path

EXIT_OK, EXIT_FAILED = 0, 1
NEVER = "—"


def open_state(path: Path) -> State:
    """The state at ``path`` for reading; an empty one (nothing recorded) when there is no
    file yet, so looking never creates it. Problems are one warning line."""
    if not path.exists():
        return State(None)
    return State(path, warn=warning)


# --- status -----------------------------------------------------------------------------------


def status_document(
    config: Config,
    state: State,
    *,
    entries: Iterable[MirrorEntry] | None = None,
    next_runs: Mapping[str, float | None] | None = None,
    others: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """Per entry (``entries``, default every configured one): its last run and outcome, its
    tags in sync / behind / failed / deferred as the last check found them, its last success
    and next run. ``next_runs`` are the scheduler's (a daemon's); without them the next run is
    estimated from the schedule and the last run. ``others`` adds jobs the state has that no
    entry names (``mirror sync REF`` runs, removed entries)."""
    now = now if now is not None else datetime.datetime.now(datetime.UTC).timestamp()
    last = state.last_runs()
    summary = state.tag_summary()
    shown: list[dict[str, Any]] = []
    for entry in config.mirrors if entries is None else entries:
        job = entry.job_id(config.target)
        run = last.get(job)
        if next_runs is not None:
            upcoming, estimated = next_runs.get(job), False
        else:
            upcoming, estimated = _estimate_next(entry, run, now), True
        shown.append(
            _entry_status(job, run, summary.get(job, {}), upcoming)
            | {
                "configured": True,
                "schedule": entry.schedule,
                "next_run_estimated": estimated and upcoming is not None,
            }
        )
    if others:
        named = {e["entry"] for e in shown}
        for job in sorted(set(last) - named):
            shown.append(
                _entry_status(job, last[job], summary.get(job, {}), None)
                | {"configured": False, "schedule": None, "next_run_estimated": False}
            )
    return {
        "state": str(state.path) if state.path else None,
        "state_problem": state.problem,
        "generated": iso(now),
        "entries": shown,
    }


def _entry_status(
    job: str, run: dict[str, Any] | None, tags: Mapping[str, Any], upcoming: float | None
) -> dict[str, Any]:
    failed, deferred = tags.get("failed", 0), tags.get("deferred", 0)
    return {
        "entry": job,
        "last_run": None
        if run is None
        else {
            "started": iso(run["started"]),
            "finished": iso(run["finished"]),
            "outcome": run["outcome"] or "running",
            "tags_checked": run["tags_checked"],
            "tags_copied": run["tags_copied"],
            "tags_skipped": run["tags_skipped"],
            "tags_failed": run["tags_failed"],
            "tags_deferred": run["tags_deferred"],
            "blobs_copied": run["blobs_copied"],
            "bytes": run["bytes"],
            "pulls": run["pulls"],
            "error": run["error"],
        },
        "last_success": iso(run["last_success"]) if run else None,
        "next_run": iso(upcoming),
        "tags": {
            "in_sync": tags.get("copied", 0) + tags.get("skipped", 0),
            "behind": failed + deferred,
            "failed": failed,
            "deferred": deferred,
            "missing_upstream": tags.get("missing", 0),
        },
        "behind_since": iso(tags.get("behind_since")),
    }


def _estimate_next(entry: MirrorEntry, run: dict[str, Any] | None, now: float) -> float | None:
    """When a daemon would run ``entry`` next, as far as the schedule tells (its jitter and
    start time are the daemon's): the next cron time, or the last start plus the interval
    while that is still ahead. None when unknown."""
    if entry.cron is not None:
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(entry.cron, timezone=datetime.UTC)
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        upcoming = trigger.get_next_fire_time(None, moment)
        return upcoming.timestamp() if upcoming else None
    if run is None or entry.interval is None:
        return None
    due = float(run["started"]) + entry.interval
    return due if due > now else None


def status_lines(document: Mapping[str, Any]) -> list[str]:
    """The status document as a person reads it: a block per entry."""
    lines: list[str] = []
    for entry in document["entries"]:
        heading = entry["entry"] + (f"  ({entry['schedule']})" if entry["schedule"] else "")
        lines.append(heading if entry["configured"] else f"{heading}  (not a configured entry)")
        run = entry["last_run"]
        if run is None:
            lines.append("  last run      never")
        else:
            what = (
                f"{run['outcome']}, {run['tags_checked']} tags checked, {run['tags_copied']} "
                f"copied ({size(run['bytes'])})"
            )
            lines.append(f"  last run      {_when(run['started'])}  {what}")
            if run["error"]:
                lines.append(f"                {run['error']}")
        tags = entry["tags"]
        counts = (
            f"{tags['in_sync']} in sync, {tags['behind']} behind ({tags['failed']} failed, "
            f"{tags['deferred']} deferred)"
        )
        if entry["behind_since"]:
            counts += f" since {_when(entry['behind_since'])}"
        if tags["missing_upstream"]:
            counts += f"; {tags['missing_upstream']} gone from upstream's selection"
        lines.append(f"  tags          {counts}")
        lines.append(f"  last success  {_when(entry['last_success'])}")
        upcoming = _when(entry["next_run"])
        if entry["next_run_estimated"]:
            upcoming = f"about {upcoming} (from the schedule; a daemon adds jitter)"
        lines.append(f"  next run      {upcoming}")
    return lines


def _when(text: str | None) -> str:
    return text.replace("T", " ").replace("Z", " UTC") if text else NEVER


def status_command(args: argparse.Namespace) -> int:
    """``mirror status``: 0 when every entry's last run succeeded (or it has not run yet), 1
    when one failed or partly failed, or the state cannot be read."""
    config = load_config(config_path(args.config))
    path = resolve_path(config.state)
    state = open_state(path)
    try:
        document = status_document(config, state, others=True)
    finally:
        state.close()
    if args.json:
        print(json.dumps(document))
    else:
        if not path.exists():
            print(f"nothing recorded yet: no state at {path}")
        for line in status_lines(document):
            print(line)
    if document["state_problem"]:
        return EXIT_FAILED
    outcomes = {
        e["last_run"]["outcome"] for e in document["entries"] if e["configured"] and e["last_run"]
    }
    return EXIT_FAILED if outcomes & {"failed", "partial"} else EXIT_OK


# --- history ----------------------------------------------------------------------------------


def history_document(state: State, text: str) -> dict[str, Any]:
    """Every digest change of the tag ``text`` names, as a source (``golang:1.22``: each
    target it is copied to) or as a target (``registry.local:5000/library/golang:1.22``).
    Raises ConfigError for a reference that is not a tag."""
    try:
        ref = parse_reference(text).with_default_tag()
    except InvalidReference as exc:
        raise ConfigError(f"history: {exc}") from None
    if ref.digest is not None or ref.tag is None:
        raise ConfigError(f"history: {text} names a digest, which never changes; give a tag")
    keys: list[tuple[str, str, str]] = [
        (row["target"], row["repository"], row["tag"]) for row in state.tags_from(str(ref))
    ]
    if (ref.registry, ref.repository, ref.tag) not in keys and (
        state.tag(ref.registry, ref.repository, ref.tag)
        or state.history(ref.registry, ref.repository, ref.tag)
    ):
        keys.insert(0, (ref.registry, ref.repository, ref.tag))
    tags = []
    for target, repository, tag in keys:
        row = state.tag(target, repository, tag)
        digest = row["target_digest"] if row else None
        tags.append(
            {
                "target": f"{target}/{repository}:{tag}",
                "source": row["source"] if row else None,
                "digest": digest,
                "written_by_mirror": bool(row and digest and row["written_digest"] == digest),
                "status": row["status"] if row else "pruned",
                "checked": iso(row["checked"]) if row else None,
                "changes": [
                    {
                        "at": iso(change["at"]),
                        "from": change["old_digest"],
                        "to": change["new_digest"],
                        "run": change["run"],
                    }
                    for change in state.history(target, repository, tag)
                ],
            }
        )
    return {"reference": str(ref), "state": str(state.path) if state.path else None, "tags": tags}


def history_lines(document: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for tag in document["tags"]:
        lines.append(tag["target"] + (f"  from {tag['source']}" if tag["source"] else ""))
        for change in tag["changes"]:
            if change["from"] is None:
                what = f"{change['to']}  (first seen)"
            elif change["to"] is None:
                what = f"{change['from']} -> deleted by mirror prune"
            else:
                what = f"{change['from']} -> {change['to']}"
            lines.append(f"  {_when(change['at'])}  {what}")
        if tag["checked"]:
            lines.append(f"  last checked {_when(tag['checked'])}: {tag['status']}")
    return lines


def history_command(args: argparse.Namespace) -> int:
    """``mirror history REF``: 0 with the changes; 1 with one line when nothing is recorded."""
    config = load_config(config_path(args.config))
    path = resolve_path(config.state)
    state = open_state(path)
    try:
        document = history_document(state, args.ref)
    finally:
        state.close()
    if not document["tags"]:
        if state.problem is None:
            error(
                f"history: nothing recorded for {document['reference']} in {path}: no run "
                "has checked that tag (as a source or as a target)"
            )
        return EXIT_FAILED
    print(json.dumps(document) if args.json else "\n".join(history_lines(document)))
    return EXIT_OK
