"""The ``mirror`` command: argument parsing, exit codes, progress display and output.

The only module that calls ``asyncio.run``. Exit codes: 0 every selected tag is in sync,
1 something failed (one line per failure on stderr), 2 usage or config errors, 3 some tags
were deferred to spare the source's pull limit (nothing failed; ``--deferred-ok`` makes that
0). Heavy imports wait until a command runs, so ``mirror --help`` and no-op syncs start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from mirror import __version__

if TYPE_CHECKING:
    from mirror.jobs import SyncRequest
    from mirror.reference import Digest
    from mirror.report import CopyReport
    from mirror.selection import TagRules

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED = 0, 1, 2, 3
JOBS_IN_FLIGHT = 4  # `sync --all`: entries run at once; each bounds its own transfers
LOG_LEVELS = ("debug", "info", "warning", "error")
HEALTHCHECK_TIMEOUT_S = 4.0  # under Docker's default HEALTHCHECK --timeout of 30 s, and ours
EPILOG = (
    "Exit status: 0 in sync, 1 something failed, 2 usage or config error, 3 tags deferred "
    "to spare the source's pull limit (nothing failed). Defaults come from the config file "
    "(--config, else $MIRROR_CONFIG), then MIRROR_* environment variables, then mirror's own."
)


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config (default: $MIRROR_CONFIG; without either, built-in defaults and "
        "MIRROR_* environment variables)",
    )


def _with_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="the least severe log line to write (default: info)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="write only failures (errors), nothing on success: for cron, which mails output",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror",
        description="Mirror container images into a local registry, copying only what is missing.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sync = commands.add_parser(
        "sync",
        help="copy images once, now",
        description=(
            "Copy images into the target registry. REF without a tag means every tag of that "
            "repository; with a tag, that tag; with a digest, that manifest."
        ),
        epilog=EPILOG,
    )
    sync.add_argument("refs", nargs="*", metavar="REF", help="e.g. diamol/golang, golang:1.22")
    sync.add_argument(
        "--all",
        action="store_true",
        help="run every [[mirrors]] entry of the config once, then exit (for cron and CronJobs)",
    )
    sync.add_argument(
        "--to",
        metavar="TARGET",
        help="a registry (localhost:5000: repository paths kept) or one repository "
        "(registry.local:5000/gallery/ui); default: the config's target, else localhost:5000",
    )
    _with_config(sync)
    sync.add_argument("--dry-run", action="store_true", help="report what would move; move nothing")
    sync.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sync.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="blob transfers at once (default: the config's concurrency, else 4)",
    )
    sync.add_argument(
        "--shard", metavar="I/N", help="with --all: only shard I of N's entries (0-based)"
    )
    sync.add_argument(
        "--deferred-ok",
        action="store_true",
        help="exit 0, not 3, when tags were only deferred to spare the pull limit (for "
        "schedulers such as a Kubernetes CronJob that retry a failed run at once)",
    )
    _with_logging(sync)
    _add_rule_arguments(sync)
    sync.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="copy only these platforms of a multi-platform image (repeatable); the target "
        "gets an index listing only them, with a new digest",
    )
    sync.add_argument(
        "--flatten",
        action="store_true",
        help="with one --platform: copy that platform's image as a plain manifest, no index",
    )
    sync.add_argument(
        "--recheck",
        action="store_true",
        help="check full-version tags upstream too (normally a tag like 2.1.106 that the "
        "target already has is trusted: it names one build forever)",
    )

    tags = commands.add_parser(
        "tags",
        help="list which tags of a repository the rules select, and why; copy nothing",
        description=(
            "List a repository's tags with the decision for each. Costs no pulls. With "
            "--entry, the rules (and, for a repository entry, the repository) of a configured "
            "[[mirrors]] entry."
        ),
    )
    tags.add_argument(
        "ref",
        nargs="?",
        metavar="REPOSITORY",
        help="e.g. diamol/golang (default with --entry: the entry's source)",
    )
    tags.add_argument(
        "--entry",
        metavar="SOURCE",
        help="preview this [[mirrors]] entry's tag rules: its source as written in the "
        "config (or its job name, 'SOURCE -> TARGET', when two entries share a source)",
    )
    _with_config(tags)
    tags.add_argument("--json", action="store_true", help="print the decisions as JSON")
    tags.add_argument(
        "--selected", action="store_true", help="print only the selected tags, one a line"
    )
    _add_rule_arguments(tags)

    plan = commands.add_parser(
        "plan",
        help="what a run of every [[mirrors]] entry would do, and what it would cost",
        description=(
            "For every configured entry: per tag, copy / skip / defer with the upstream pulls "
            "it costs and the blobs and bytes missing at the target; then totals and the "
            "quota left at each source. Moves nothing (it reads manifests it needs to size)."
        ),
    )
    _with_config(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.add_argument("--shard", metavar="I/N", help="only shard I of N's entries (0-based)")
    plan.add_argument("--recheck", action="store_true", help="check full versions upstream too")

    show = commands.add_parser(
        "config",
        help="check the config and print it resolved (defaults merged, secrets masked)",
        description=(
            "Load and validate the config (file plus MIRROR_* environment), then print it as "
            "JSON with [defaults] merged into every entry, each entry's job name, and for each "
            "registry whether its password can be read. Passwords are never printed."
        ),
    )
    _with_config(show)
    show.add_argument(
        "--check",
        action="store_true",
        help="print nothing but problems: exit 2 when the config is invalid or a password it "
        "names cannot be read (for systemd's ExecStartPre=)",
    )

    run = commands.add_parser(
        "run",
        help="run as a service: every [[mirrors]] entry on its schedule",
        description=(
            "Keep the target in step: one job per [[mirrors]] entry, run at start-up and then "
            "on its interval or cron schedule. SIGTERM/SIGINT stop it cleanly, SIGHUP reloads "
            "the config. Health and metrics are served on [daemon] listen (default "
            "127.0.0.1:9755)."
        ),
        epilog=EPILOG,
    )
    _with_config(run)
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only the entries of shard I of N (0-based), so N replicas share the work",
    )
    _with_logging(run)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when the daemon here answers /healthz (a container's HEALTHCHECK)",
        description=(
            "Ask the daemon's /healthz at [daemon] listen (0.0.0.0 and :: are asked on "
            "loopback). Exit 0 when it answers 200, or when this container's main process is "
            "not `mirror run` (a `sync --all` container has nothing to check); 1 otherwise."
        ),
    )
    _with_config(health)
    return parser


def _add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    rules = parser.add_argument_group("tag rules (for a REF without a tag)")
    rules.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="REGEX",
        help="keep only tags matching one of these (whole tag); repeatable",
    )
    rules.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="REGEX",
        help="leave out tags matching any of these; deny wins over allow; repeatable",
    )
    rules.add_argument(
        "--versions", metavar="RANGE", help='a version range such as ">=2.1, <4" or "==2.*"'
    )
    rules.add_argument("--newest", type=int, metavar="N", help="only the N highest versions")
    rules.add_argument(
        "--aliases",
        action="store_true",
        help="also keep the moving aliases (2, 2.1, latest) whose newest version is selected",
    )
    rules.add_argument(
        "--prereleases", action="store_true", help="let pre-releases (1.2.3-rc.1) through"
    )


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
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sync" and args.all and args.refs:
        parser.error("sync: give REFs or --all, not both")
    if args.command == "sync" and not args.all and not args.refs:
        parser.error("sync: give at least one REF, or --all to run every configured entry")
    if args.command == "sync" and args.refs and args.shard:
        parser.error("sync: --shard splits the configured entries; it takes --all, not REFs")
    if args.command == "tags" and not args.ref and not args.entry:
        parser.error("tags: give a REPOSITORY, or --entry SOURCE for a configured entry")
    from mirror.errors import MirrorError

    try:
        if args.command == "sync" and args.all:
            return _until_signal(_sync_all(args))
        if args.command == "sync":
            return _until_signal(_sync(args))
        if args.command == "run":
            return _run(args)
        if args.command == "tags":
            return _until_signal(_tags(args))
        if args.command == "plan":
            return _until_signal(_plan(args))
        if args.command == "config":
            return _show_config(args)
        if args.command == "healthcheck":
            return _healthcheck(args)
    except MirrorError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted; tags already written are complete, nothing else was tagged")
        return 130
    except asyncio.CancelledError:
        _error("stopped by SIGTERM; tags already written are complete, nothing else was tagged")
        return 143
    return EXIT_USAGE


def _until_signal(command: Coroutine[Any, Any, int]) -> int:
    """Run a one-shot command; SIGTERM (a CronJob's deadline, systemd) cancels it cleanly.

    Cancelling is safe at any point: a copy writes its tag last.
    """

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await command

    return asyncio.run(runner())


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


async def _sync(args: argparse.Namespace) -> int:
    from mirror.config import config_path, load_config
    from mirror.copy import Copier
    from mirror.errors import MirrorError
    from mirror.jobs import Clients, sync
    from mirror.manifest import Platform
    from mirror.report import CopyReport
    from mirror.selection import DEFAULT_IMMUTABLE

    config = load_config(config_path(args.config))
    requests = resolve_requests(args.refs, args.to or config.target)
    rules = rules_from(args)
    if not rules.selects_everything and any(r.source.tag or r.source.digest for r in requests):
        raise MirrorError("tag rules apply to REFs without a tag or digest")
    immutable = None if args.recheck else DEFAULT_IMMUTABLE
    platforms = [Platform.parse(p) for p in args.platform]
    concurrency = config.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise MirrorError("--concurrency must be at least 1")

    started = time.monotonic()
    clients = Clients(config)
    report = CopyReport(dry_run=args.dry_run)
    show_progress = sys.stderr.isatty() and not args.json and not args.quiet
    display = _ProgressDisplay() if show_progress else None
    try:
        if failure := await _preflight(clients, requests):
            _error(failure)
            return EXIT_FAILED
        for source_name, target_name in sorted(
            {(r.source.registry, r.target.registry) for r in requests}
        ):
            copier = Copier(
                clients.get(source_name),
                clients.get(target_name),
                concurrency=concurrency,
                dry_run=args.dry_run,
                progress=display,
                report=report,
                platforms=platforms,
                flatten=args.flatten,
            )
            batch = [
                r
                for r in requests
                if (r.source.registry, r.target.registry) == (source_name, target_name)
            ]
            if display:
                display.start()
            try:
                await asyncio.gather(
                    *(sync(copier, r, rules=rules, immutable=immutable) for r in batch)
                )
            finally:
                if display:
                    display.stop()
    finally:
        await clients.aclose()
    elapsed = time.monotonic() - started

    if args.json:
        document = report.as_dict()
        document["seconds"] = round(elapsed, 3)
        print(json.dumps(document))
    elif not args.quiet:
        _print_report(report, elapsed)
    for result in report.tags:
        if result.status == "failed" or (result.status == "deferred" and not args.quiet):
            _error(f"{result.source}: {result.error}")
    if report.tags_failed:
        return EXIT_FAILED
    return _deferred_exit(args) if report.tags_deferred else EXIT_OK


def _deferred_exit(args: argparse.Namespace) -> int:
    """Exit 3 when tags were deferred to spare the pull limit; 0 with ``--deferred-ok``."""
    return EXIT_OK if args.deferred_ok else EXIT_DEFERRED


async def _tags(args: argparse.Namespace) -> int:
    """``mirror tags REPOSITORY [rules]``: the decision and its reason for every tag."""
    from mirror.config import config_path, load_config
    from mirror.errors import MirrorError
    from mirror.jobs import Clients
    from mirror.reference import parse_repository
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
        _error(str(exc))
        return EXIT_FAILED
    finally:
        await clients.aclose()
    selection = select(tags, rules)
    if args.json:
        print(
            json.dumps(
                {
                    "repository": repository.name,
                    "selected": selection.tags,
                    "tags": [
                        {"tag": d.tag, "selected": d.selected, "reason": d.reason}
                        for d in selection.decisions
                    ],
                }
            )
        )
    elif args.selected:
        for tag in selection.tags:
            print(tag)
    else:
        width = max((len(d.tag) for d in selection.decisions), default=0)
        for decision in selection.decisions:
            mark = "+" if decision.selected else "-"
            print(f"{mark} {decision.tag:<{width}}  {decision.reason}")
        print(f"{len(selection.tags)} of {len(selection.decisions)} tags selected")
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


def _show_config(args: argparse.Namespace) -> int:
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
        for problem in problems:
            _error(f"config {path or 'environment'}: {problem}")
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
    for entry, shown in zip(config.mirrors, document["mirrors"], strict=True):
        shown["job"] = entry.job_id(config.target)
        shown["schedule"] = entry.schedule
    document["config_file"] = str(path) if path else None
    print(json.dumps(document, indent=2))
    return EXIT_OK


async def _plan(args: argparse.Namespace) -> int:
    """``mirror plan``: a dry run of every configured entry, as a table (or JSON)."""
    import logging

    from mirror.config import config_path, load_config
    from mirror.daemon import Shard
    from mirror.errors import ConfigError
    from mirror.jobs import Clients, run_entry
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

    action = {"planned": "copy", "skipped": "skip", "deferred": "defer", "failed": "FAIL"}
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
                    line += f"  pulls {t.pulls}, {t.blobs_missing} blobs, {_size(t.bytes_missing)}"
                elif t.error:
                    line += f"  ({t.error})"
                print(line)
        print(
            f"totals: {totals['copy']} to copy, {totals['skip']} in sync, {totals['defer']} "
            f"deferred, {totals['fail']} failing; {totals['pulls']} upstream pulls; "
            f"{totals['blobs']} blobs ({_size(totals['bytes'])}) to copy"
        )
        for name, budget in quotas.items():
            print(f"quota: {name}: {budget.describe()}")
    return EXIT_FAILED if totals["fail"] else EXIT_OK


async def _sync_all(args: argparse.Namespace) -> int:
    """``mirror sync --all``: every configured entry once, logged like the daemon's runs."""
    from mirror.config import config_path, load_config
    from mirror.daemon import Shard
    from mirror.errors import ConfigError
    from mirror.jobs import Clients, run_entry
    from mirror.logs import configure_logging

    path = config_path(args.config)
    config = load_config(path)
    if (
        args.to
        or args.concurrency is not None
        or args.platform
        or args.flatten
        or not rules_from(args).selects_everything
    ):
        raise ConfigError(
            "--all takes targets, concurrency, tag rules and platforms from the config"
        )
    shard = Shard.parse(args.shard) if args.shard else None
    entries = [e for e in config.mirrors if shard is None or shard.owns(e.job_id(config.target))]
    if not config.mirrors:
        raise ConfigError(f"config {path or 'environment'}: no [[mirrors]] entries to run")
    configure_logging(
        config.daemon.log_format,
        level=_log_level(args),
        stream=sys.stderr if args.json else sys.stdout,
    )
    clients = Clients(config)
    bound = asyncio.Semaphore(JOBS_IN_FLIGHT)

    async def one(entry: Any) -> Any:
        async with bound:
            return await run_entry(entry, clients, dry_run=args.dry_run, recheck=args.recheck)

    try:
        results = await asyncio.gather(*(one(e) for e in entries))
    finally:
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
    return _deferred_exit(args) if any(r.report.tags_deferred for r in results) else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    """``mirror run``: the daemon, until SIGTERM or SIGINT."""
    from mirror.config import config_path, load_config
    from mirror.daemon import Shard, serve
    from mirror.logs import configure_logging

    path = config_path(args.config)
    shard = Shard.parse(args.shard) if args.shard else None
    configure_logging(load_config(path).daemon.log_format, level=_log_level(args))
    return asyncio.run(serve(path, shard=shard))


def _log_level(args: argparse.Namespace) -> int:
    """``--log-level``, or errors only with ``--quiet`` (a cron run then writes nothing unless
    something failed), else info."""
    import logging

    if args.log_level:
        return int(logging.getLevelName(args.log_level.upper()))
    return logging.ERROR if args.quiet else logging.INFO


def _healthcheck(args: argparse.Namespace) -> int:
    """``mirror healthcheck``: 0 when the daemon answers /healthz, or when there is no daemon
    to ask because this container's main process is something else (``sync --all``)."""
    import urllib.error
    import urllib.request

    from mirror.config import config_path, load_config

    if not _main_process_is_daemon():
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
        _error(f"healthcheck: {url}: {getattr(exc, 'reason', exc)}")
        return EXIT_FAILED
    if status != 200:
        _error(f"healthcheck: {url} answered HTTP {status}")
        return EXIT_FAILED
    return EXIT_OK


def _main_process_is_daemon(cmdline: str = "/proc/1/cmdline") -> bool:
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


def _print_report(report: CopyReport, elapsed: float) -> None:
    verb = {
        "copied": "copied",
        "skipped": "in sync",
        "failed": "FAILED",
        "planned": "would copy",
        "deferred": "deferred",
    }
    for result in report.tags:
        line = f"{verb[result.status]:<10} {result.source} -> {result.target}"
        if result.digest:
            line += f"  {result.digest[:19]}"
        if result.source_digest:
            line += f" (from {result.source_digest[:19]})"
        if result.status in ("copied", "planned") and (
            result.blobs_missing or result.bytes_missing
        ):
            line += f"  {result.blobs_missing} blobs, {_size(result.bytes_missing)}"
        print(line)
    would = "would be " if report.dry_run else ""
    print(
        f"{report.tags_checked} tags: {report.tags_copied} {would}copied, "
        f"{report.tags_skipped} in sync, {report.tags_failed} failed"
        + (f", {report.tags_deferred} deferred; " if report.tags_deferred else "; ")
        + f"blobs: {report.blobs_copied} {would}copied ({_size(report.bytes_copied)}), "
        f"{report.blobs_mounted} mounted, {report.blobs_present} already present; "
        f"{report.manifests_pushed} manifests {would}pushed; "
        f"{report.upstream_manifest_gets} upstream manifest GETs; {elapsed:.1f} s"
    )


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _error(message: str) -> None:
    from mirror.logs import journal_prefix

    print(f"{journal_prefix(sys.stderr, 'error')}mirror: error: {message}", file=sys.stderr)


class _ProgressDisplay:
    """Progress bars on a terminal (rich), one per blob in flight and one for the total."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def blob_started(self, digest: Digest, size: int) -> None:
        self._tasks[digest] = self._progress.add_task(digest.hex[:12], total=size)

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.advance(task, nbytes)

    def blob_finished(self, digest: Digest) -> None:
        task = self._tasks.pop(digest, None)
        if task is not None:
            self._progress.remove_task(task)
