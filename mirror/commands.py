"""What each command of ``mirror`` does, once its arguments are parsed.

Owns the commands' work (sync, sync --all, tags, plan, config, healthcheck), the exit status
each returns, and the checks between arguments and config (``--entry``, rules with a tag,
``--all`` with flags); the air gap's own (inventory, ``--have``) are
``mirror.airgap_commands``'. Parsing and ``asyncio.run`` are ``mirror.cli``'s; printing is
``mirror.output``'s. Heavy imports wait inside each command, so ``mirror --help`` and a no-op
sync start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from mirror.output import ProgressDisplay, error, print_report, size, warning

if TYPE_CHECKING:
    from mirror.jobs import SyncRequest
    from mirror.selection import TagRules

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED = 0, 1, 2, 3
JOBS_IN_FLIGHT = 4  # `sync --all`: entries run at once; each bounds its own transfers
HEALTHCHECK_TIMEOUT_S = 4.0  # under Docker's default HEALTHCHECK --timeout of 30 s, and ours


def rules_from(args: argparse.Namespace) -> TagRules:
    """The tag rules the command line gives (every tag when it gives none)."""
    from mirror.selection import TagRules

    return TagRules(
        allow=tuple(args.allow),
        deny=tuple(args.deny),
        versions=args.versions,
        prereleases=args.prereleases,
        newest=args.newest,
        aliases=args.aliases,
        variants=tuple(args.variant),
    )


def resolve_requests(refs: list[str], target_text: str) -> list[SyncRequest]:
    """Pair each source REF with its target repository.

    TARGET that names only a registry keeps each source's repository path; TARGET naming a
    repository takes exactly one REF. Raises InvalidReference or ConfigError (exit code 2).
    """
    from mirror.errors import ConfigError
    from mirror.jobs import SyncRequest
    from mirror.reference import names_registry, parse_reference, resolve_target

    sources = [parse_reference(ref) for ref in refs]
    if len(sources) > 1 and not names_registry(target_text):
        raise ConfigError(
            f"target {target_text} is one repository; give one REF, or a registry as the target"
        )
    return [SyncRequest(source, resolve_target(source, target_text)) for source in sources]


async def sync_command(args: argparse.Namespace) -> int:
    from mirror.airgap_commands import expect_inventory, namespace_requests
    from mirror.clients import Clients
    from mirror.config import config_path, load_config
    from mirror.copy import Copier
    from mirror.errors import MirrorError
    from mirror.jobs import check_bundle, counts_of, outcome_of, record_run, sync
    from mirror.layout import Layout
    from mirror.manifest import Platform
    from mirror.reference import is_namespace
    from mirror.report import CopyReport
    from mirror.selection import DEFAULT_IMMUTABLE

    config = load_config(config_path(args.config))
    target_text = args.to or config.target
    requests = resolve_requests([r for r in args.refs if not is_namespace(r)], target_text)
    rules = rules_from(args)
    if not rules.selects_everything and any(r.source.tag or r.source.digest for r in requests):
        raise MirrorError("tag rules apply to REFs without a tag or digest")
    immutable = None if args.recheck else DEFAULT_IMMUTABLE
    platforms = [Platform.parse(p) for p in args.platform]
    concurrency = config.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise MirrorError("--concurrency must be at least 1")
    backup = _backup_flag(args.backup)

    started = time.monotonic()
    clients = Clients(config, state_warning=warning)
    report = CopyReport(dry_run=args.dry_run)
    show_progress = sys.stderr.isatty() and not args.json and not args.quiet
    display = ProgressDisplay() if show_progress else None
    try:
        try:
            namespaces = [r for r in args.refs if is_namespace(r)]
            requests += await namespace_requests(clients, namespaces, target_text)
        except MirrorError as exc:
            error(str(exc))
            return EXIT_FAILED
        bundles = expect_inventory(clients, args.have, {r.target.registry for r in requests})
        if failure := await _preflight(clients, requests):
            error(failure)
            return EXIT_FAILED
        copiers = {
            (source_name, target_name): Copier(
                clients.get(source_name),
                clients.get(target_name),
                concurrency=concurrency,
                dry_run=args.dry_run,
                progress=display,
                report=report,
                platforms=platforms,
                flatten=args.flatten,
                referrers=not args.no_referrers,
                unsupported=None
                if args.dry_run or args.recheck
                else clients.remembered_unsupported(),
                backup=backup,
                journal=None if args.dry_run else clients.journal,
            )
            for source_name, target_name in sorted(
                {(r.source.registry, r.target.registry) for r in requests}
            )
        }

        def batch_of(pair: tuple[str, str]) -> list[SyncRequest]:
            return [r for r in requests if (r.source.registry, r.target.registry) == pair]

        missing = [  # an import: everything its tags need is there, or no tag moves
            line
            for pair, copier in copiers.items()
            if isinstance(copier.source, Layout)
            for line in await check_bundle(copier, batch_of(pair), rules, platforms)
        ]
        if missing:
            if args.json:
                print(json.dumps({**report.as_dict(), "missing": missing}))
            for line in missing:
                error(line)
            error(f"bundle incomplete: {len(missing)} missing, so no tag was imported")
            return EXIT_FAILED
        for pair, copier in copiers.items():
            if display:
                display.start()

            async def one(request: SyncRequest, copier: Copier = copier) -> None:
                # Recorded like an entry's run; the job is named as an entry's would be.
                job = f"{request.source} -> {request.target.name}"
                run = None if args.dry_run else clients.state.start_run(job)
                results = await sync(copier, request, rules=rules, immutable=immutable)
                if not args.dry_run:
                    counts = counts_of(results)
                    outcome = outcome_of(counts["tags_checked"], counts["tags_failed"])
                    record_run(clients.state, run, job, results, counts, outcome, None)

            try:
                await asyncio.gather(*(one(r) for r in batch_of(pair)))
            finally:
                if display:
                    display.stop()
        if not args.dry_run:
            for layout in bundles:
                await layout.write_bundle()
    finally:
        await clients.aclose()
    elapsed = time.monotonic() - started

    if args.json:
        document = report.as_dict()
        document["seconds"] = round(elapsed, 3)
        print(json.dumps(document))
    elif not args.quiet:
        print_report(report, elapsed)
    for result in report.tags:
        if result.status == "failed" or (result.status == "deferred" and not args.quiet):
            error(f"{result.source}: {result.error}")
    if report.failed:
        return EXIT_FAILED
    return _deferred_exit(args) if report.deferred else EXIT_OK


def _backup_flag(template: str | None) -> Any:
    """``--backup TEMPLATE`` checked: a bad one is a ConfigError naming the flag."""
    from mirror.copy import backup_namer
    from mirror.errors import ConfigError

    if template is None:
        return None
    try:
        return backup_namer(template)
    except ValueError as exc:
        raise ConfigError(f"--backup: {exc}") from None


def _deferred_exit(args: argparse.Namespace) -> int:
    """Exit 3 when tags were deferred to spare the pull limit; 0 with ``--deferred-ok``."""
    return EXIT_OK if args.deferred_ok else EXIT_DEFERRED


async def tags_command(args: argparse.Namespace) -> int:
    """``mirror tags REPOSITORY [rules]``: the decision and its reason for every tag."""
    from mirror.clients import Clients
    from mirror.config import config_path, load_config
    from mirror.errors import MirrorError
    from mirror.reference import parse_repository
    from mirror.referrers import split_tags
    from mirror.selection import select

    config = load_config(config_path(args.config))
    rules = rules_from(args)
    if args.entry is not None:
        if not rules.selects_everything:
            raise MirrorError("--entry takes the entry's own tag rules; give no rule flags")
        entry = _configured_entry(config, args.entry)
        rules = entry.tags.rules()
        repository = parse_repository(args.ref or _entry_repository(entry, config.target))
    else:
        repository = parse_repository(args.ref)
    clients = Clients(config)
    try:
        tags = await clients.get(repository.registry).list_tags(repository.repository)
    except MirrorError as exc:
        error(str(exc))
        return EXIT_FAILED
    finally:
        await clients.aclose()
    tags, referrer_tags = split_tags(tags)  # no tags to the rules: they follow their images
    selection = select(tags, rules)
    if args.json:
        print(
            json.dumps(
                {
                    "repository": repository.name,
                    "selected": selection.tags,
                    "tags": [
                        {
                            "tag": d.tag,
                            "selected": d.selected,
                            "reason": d.reason,
                            "version": d.version,
                            "variant": d.variant,
                            "kind": d.kind,
                        }
                        for d in selection.decisions
                    ],
                }
            )
        )
    elif args.selected:
        for tag in selection.tags:
            print(tag)
    else:
        rows = [
            ("+" if d.selected else "-", d.tag, d.version or "-", d.variant or "-", d.kind)
            for d in selection.decisions
        ]
        reasons = [d.reason for d in selection.decisions]
        header = (" ", "TAG", "VERSION", "VARIANT", "KIND")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(1, 5)]
        for (mark, *columns), reason in zip([header, *rows], ["REASON", *reasons], strict=True):
            cells = "  ".join(f"{c:<{w}}" for c, w in zip(columns, widths, strict=True))
            print(f"{mark} {cells}  {reason}")
        print(f"{len(selection.tags)} of {len(selection.decisions)} tags selected")
        if referrer_tags:
            print(
                f"{len(referrer_tags)} signature and referrer tags (sha256-…) are no tags to the "
                "rules: each travels with the image it describes"
            )
    return EXIT_OK


def _configured_entry(config: Any, wanted: str) -> Any:
    """The ``[[mirrors]]`` entry whose source (as written) or job name is ``wanted``."""
    from mirror.errors import ConfigError

    by_job = [e for e in config.mirrors if e.job_id(config.target) == wanted]
    by_source = [e for e in config.mirrors if e.source == wanted]
    found = by_job or by_source
    if len(found) == 1:
        return found[0]
    if not found:
        sources = ", ".join(e.source for e in config.mirrors) or "none"
        raise ConfigError(f"--entry {wanted}: no [[mirrors]] entry has it as source ({sources})")
    jobs = "; ".join(e.job_id(config.target) for e in found)
    raise ConfigError(
        f"--entry {wanted}: {len(found)} entries have that source; give one of: {jobs}"
    )


def _entry_repository(entry: Any, default_target: str) -> str:
    """The repository whose tags an entry's rules choose from (its source, untagged)."""
    from mirror.errors import ConfigError

    if entry.is_namespace:
        raise ConfigError(
            f"--entry {entry.source} covers a namespace: give one of its repositories as well"
        )
    source, _ = entry.endpoints(default_target)
    if source.tag or source.digest:
        raise ConfigError(f"--entry {entry.source} names one tag or digest; it has no tag rules")
    return str(source)


def config_command(args: argparse.Namespace) -> int:
    """``mirror config``: the resolved config as JSON, with every secret masked.

    ``--check`` prints nothing but problems and exits 2 when there are any: an invalid config
    (raised, as for every command) or a password it names that cannot be read."""
    from mirror.config import config_path, load_config
    from mirror.errors import ConfigError

    path = config_path(args.config)
    config = load_config(path)
    if args.check:
        problems = []
        for name in config.registries:
            try:
                config.credentials(name)
            except ConfigError as exc:
                problems.append(str(exc))
        for index, receiver in enumerate(config.notify):
            try:
                receiver.resolved_url(f"notify[{index}]")
            except ConfigError as exc:
                problems.append(str(exc))
        for problem in problems:
            error(f"config {path or 'environment'}: {problem}")
        return EXIT_USAGE if problems else EXIT_OK
    document = config.model_dump(mode="json")
    for name in document["registries"]:
        try:
            credentials = config.credentials(name)
        except ConfigError as exc:
            status: Any = f"cannot be read: {exc}"
        else:
            status = (
                {"username": credentials.username, "password": "********"}
                if credentials
                else "none configured (docker login's config.json is used, if any)"
            )
        document["registries"][name]["credentials"] = status
    for receiver in document["notify"]:
        if receiver["url"] is not None:
            receiver["url"] = "********"  # it often holds a token
    for entry, shown in zip(config.mirrors, document["mirrors"], strict=True):
        shown["job"] = entry.job_id(config.target)
        shown["schedule"] = entry.schedule
    document["config_file"] = str(path) if path else None
    print(json.dumps(document, indent=2))
    return EXIT_OK


async def plan_command(args: argparse.Namespace) -> int:
    """``mirror plan``: a dry run of every configured entry, as a table (or JSON)."""
    import logging

    from mirror.clients import Clients
    from mirror.config import config_path, load_config
    from mirror.daemon import Shard
    from mirror.errors import ConfigError
    from mirror.jobs import run_entry
    from mirror.logs import configure_logging

    path = config_path(args.config)
    config = load_config(path)
    if not config.mirrors:
        raise ConfigError(f"config {path or 'environment'}: no [[mirrors]] entries to plan")
    shard = Shard.parse(args.shard) if args.shard else None
    entries = [e for e in config.mirrors if shard is None or shard.owns(e.job_id(config.target))]
    configure_logging(config.daemon.log_format, level=logging.ERROR, stream=sys.stderr)
    clients = Clients(config)
    try:
        results = [
            await run_entry(entry, clients, dry_run=True, recheck=args.recheck)
            for entry in entries  # in entry order: that is the budget's priority order
        ]
        quotas = {
            name: client.budget
            for name in sorted({r.source_registry for r in results})
            if (client := clients.peek(name)) is not None
        }
    finally:
        await clients.aclose()

    action = {
        "planned": "copy",
        "skipped": "skip",
        "deferred": "defer",
        "failed": "FAIL",
        "unsupported": "leave",
    }
    tags = [t for r in results for t in r.report.tags]
    totals = {
        "copy": sum(t.status == "planned" for t in tags),
        "skip": sum(t.status == "skipped" for t in tags),
        "defer": sum(t.status == "deferred" for t in tags),
        "fail": sum(t.status == "failed" for t in tags),
        "pulls": sum(r.report.upstream_manifest_gets for r in results),
        "blobs": sum(r.report.blobs_copied for r in results),
        "bytes": sum(r.report.bytes_copied for r in results),
    }
    quota_view = {
        name: {
            "limit": b.rate_limit.limit if b.rate_limit else None,
            "remaining": b.rate_limit.remaining if b.rate_limit else None,
            "window_s": b.rate_limit.window_s if b.rate_limit else None,
            "reserve": b.reserve,
        }
        for name, b in quotas.items()
    }
    if args.json:
        entries_view = [
            {
                "entry": r.job,
                "error": r.error,
                "tags": [
                    {
                        "tag": t.target,
                        "action": action[t.status],
                        "pulls": t.pulls,
                        "blobs_missing": t.blobs_missing,
                        "bytes_missing": t.bytes_missing,
                        "reason": t.error,
                    }
                    for t in r.report.tags
                ],
            }
            for r in results
        ]
        print(json.dumps({"entries": entries_view, "totals": totals, "quota": quota_view}))
    else:
        for r in results:
            print(r.job + (f"  ({r.error})" if r.error else ""))
            for t in r.report.tags:
                line = f"  {action[t.status]:<6} {t.target}"
                if t.status == "planned":
                    line += f"  pulls {t.pulls}, {t.blobs_missing} blobs, {size(t.bytes_missing)}"
                elif t.error:
                    line += f"  ({t.error})"
                print(line)
        print(
            f"totals: {totals['copy']} to copy, {totals['skip']} in sync, {totals['defer']} "
            f"deferred, {totals['fail']} failing; {totals['pulls']} upstream pulls; "
            f"{totals['blobs']} blobs ({size(totals['bytes'])}) to copy"
        )
        for name, budget in quotas.items():
            print(f"quota: {name}: {budget.describe()}")
    return EXIT_FAILED if totals["fail"] else EXIT_OK


async def sync_all_command(args: argparse.Namespace) -> int:
    """``mirror sync --all``: every configured entry once, logged like the daemon's runs."""
    from mirror.airgap_commands import expect_inventory
    from mirror.clients import Clients
    from mirror.config import config_path, load_config
    from mirror.daemon import Shard
    from mirror.errors import ConfigError
    from mirror.jobs import run_entry
    from mirror.logs import configure_logging
    from mirror.reference import is_layout, layout_name, names_registry

    path = config_path(args.config)
    config = load_config(path)
    if (
        args.concurrency is not None
        or args.platform
        or args.flatten
        or args.backup is not None
        or not rules_from(args).selects_everything
    ):
        raise ConfigError(
            "--all takes concurrency, tag rules, platforms and backups from the config"
        )
    if args.to and not names_registry(args.to):
        raise ConfigError(
            f"--all --to {args.to}: give a registry or oci:DIR (each entry's target registry "
            "is replaced, its repository path kept)"
        )
    if args.have and not (args.to and is_layout(args.to)):
        raise ConfigError("--all --have writes a delta bundle: give --to oci:DIR")
    shard = Shard.parse(args.shard) if args.shard else None
    entries = [e for e in config.mirrors if shard is None or shard.owns(e.job_id(config.target))]
    if not config.mirrors:
        raise ConfigError(f"config {path or 'environment'}: no [[mirrors]] entries to run")
    configure_logging(
        config.daemon.log_format,
        level=log_level(args),
        stream=sys.stderr if args.json else sys.stdout,
    )
    clients = Clients(config)
    bound = asyncio.Semaphore(JOBS_IN_FLIGHT)
    notifier = None
    if config.notify and not args.dry_run:
        from mirror.notify import Notifier, last_statuses

        notifier = Notifier.from_config(config, previous=last_statuses(clients.state.last_runs()))

    async def one(entry: Any) -> Any:
        async with bound:
            result = await run_entry(
                entry, clients, dry_run=args.dry_run, recheck=args.recheck, to=args.to
            )
        if notifier is not None:
            notifier.job_finished(result)
        return result

    try:
        targets = {layout_name(args.to)} if args.have else set()
        bundles = expect_inventory(clients, args.have, targets)
        results = await asyncio.gather(*(one(e) for e in entries))
        if not args.dry_run:
            for layout in bundles:
                await layout.write_bundle()
    finally:
        if notifier is not None:
            await notifier.aclose()  # a short bound: a dead receiver does not hold the exit
        await clients.aclose()
    if args.json:
        print(
            json.dumps(
                {
                    "jobs": [
                        {
                            "job": r.job,
                            "outcome": r.outcome,
                            "seconds": round(r.seconds, 3),
                            "error": r.error,
                            "report": r.report.as_dict(),
                        }
                        for r in results
                    ]
                }
            )
        )
    if any(r.outcome != "success" for r in results):
        return EXIT_FAILED
    return _deferred_exit(args) if any(r.report.deferred for r in results) else EXIT_OK


def log_level(args: argparse.Namespace) -> int:
    """``--log-level``, or errors only with ``--quiet`` (a cron run then writes nothing unless
    something failed), else info."""
    import logging

    if args.log_level:
        return int(logging.getLevelName(args.log_level.upper()))
    return logging.ERROR if args.quiet else logging.INFO


def healthcheck_command(args: argparse.Namespace) -> int:
    """``mirror healthcheck``: 0 when the daemon answers /healthz, or when there is no daemon
    to ask because this container's main process is something else (``sync --all``)."""
    import urllib.error
    import urllib.request

    from mirror.config import config_path, load_config

    if not main_process_is_daemon():
        return EXIT_OK
    daemon = load_config(config_path(args.config)).daemon
    host = daemon.listen_host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{daemon.listen_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTHCHECK_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        error(f"healthcheck: {url}: {getattr(exc, 'reason', exc)}")
        return EXIT_FAILED
    if status != 200:
        error(f"healthcheck: {url} answered HTTP {status}")
        return EXIT_FAILED
    return EXIT_OK


def main_process_is_daemon(cmdline: str = "/proc/1/cmdline") -> bool:
    """Whether PID 1 (in a container: the image's entrypoint) is ``mirror run``. When PID 1 is
    not mirror at all (a host's init), or /proc cannot be read, the daemon is asked."""
    try:
        with open(cmdline, "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return True
    names = [a.rpartition("/")[2] for a in argv]
    if "mirror" not in names:
        return True
    after = argv[names.index("mirror") + 1 :]  # `mirror run ...`, `python -m mirror run ...`
    command = next((a for a in after if not a.startswith("-")), None)
    return command == "run"


async def _preflight(clients: Any, requests: list[SyncRequest]) -> str | None:
    """Ping every registry involved once, so an unreachable one is one line, not one per tag."""
    from mirror.errors import MirrorError

    names = sorted({r.source.registry for r in requests} | {r.target.registry for r in requests})
    outcomes = await asyncio.gather(
        *(clients.get(name).ping() for name in names), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, MirrorError):
            return str(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
    return None
