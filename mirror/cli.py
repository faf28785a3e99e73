"""The ``mirror`` command line: arguments, dispatch to a command, exit codes.

The only module that calls ``asyncio.run``. Exit codes: 0 every selected tag is in sync,
1 something failed (one line per failure on stderr), 2 usage or config errors, 3 some tags
were deferred to spare the source's pull limit (nothing failed; ``--deferred-ok`` makes that
0). What each command does is ``mirror.commands``'; what it prints, ``mirror.output``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

from mirror import __version__, commands
from mirror.commands import EXIT_USAGE, log_level
from mirror.output import error

LOG_LEVELS = ("debug", "info", "warning", "error")
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
        help="a registry (localhost:5000: repository paths kept), one repository "
        "(registry.local:5000/gallery/ui) or oci:DIR (an OCI image layout per repository); "
        "with --all, every entry's target registry, paths kept; default: the config's target, "
        "else localhost:5000",
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
        "--have",
        metavar="FILE",
        help="an inventory of the registry inside an air gap (from `mirror inventory`): write "
        "only what it lacks to the oci:DIR target, and a bundle file saying what it relies on",
    )
    sync.add_argument(
        "--backup",
        metavar="TEMPLATE",
        help="before a tag on the target moves, keep its old manifest under this tag, e.g. "
        '"{tag}-prev" or "{tag}-{date:%%Y%%m%%d}" (the date in UTC)',
    )
    sync.add_argument(
        "--recheck",
        action="store_true",
        help="check full-version tags upstream too (normally a tag like 2.1.106 that the "
        "target already has is trusted: it names one build forever), and try again the "
        "images an earlier run left on purpose (foreign layers the target refused)",
    )
    sync.add_argument(
        "--no-referrers",
        action="store_true",
        help="leave signatures, attestations and other referrers behind (normally each "
        "travels with the image it describes)",
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

    inventory = commands.add_parser(
        "inventory",
        help="what a registry holds (tags, manifests, blobs) as JSON, for `sync --have`",
        description=(
            "Print the digests of the tags, manifests and blobs REGISTRY holds, as one JSON "
            "document: for the REPOSITORIES named, else for those the config's entries copy "
            "into it, else for its whole catalog. Carry it out of an air gap; `mirror sync "
            "--to oci:DIR --have FILE` then writes only what the registry lacks."
        ),
        epilog=EPILOG,
    )
    inventory.add_argument(
        "refs",
        nargs="+",
        metavar="REGISTRY|REPOSITORY",
        help="e.g. registry.local:5000, or registry.local:5000/diamol/golang ...",
    )
    _with_config(inventory)

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

    status = commands.add_parser(
        "status",
        help="what the state recorded: each entry's last run, tags behind, next run",
        description=(
            "Per [[mirrors]] entry (and any other job recorded, such as a `mirror sync REF`): "
            "the last run and its outcome, its tags in sync / behind / failed / deferred as "
            "the last check found them, the last success and the next run (estimated from the "
            "schedule; a running daemon serves the exact one at GET /status). Exit 0 when "
            "every entry's last run succeeded or none has run, 1 when one failed or partly "
            "failed or the state cannot be read."
        ),
    )
    _with_config(status)
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")

    history = commands.add_parser(
        "history",
        help="every digest change of a tag, with times",
        description=(
            "Every digest a tag pointed at on the target, with when it changed, as recorded by "
            "runs. REF is the source as written (golang:1.22: each target it is copied to) or "
            "the target (registry.local:5000/library/golang:1.22). Exit 1 with one line when "
            "nothing is recorded for it."
        ),
    )
    history.add_argument("ref", metavar="REF", help="a tag: golang:1.22, or the target's")
    _with_config(history)
    history.add_argument("--json", action="store_true", help="print the history as JSON")

    prune = commands.add_parser(
        "prune",
        help="delete the tags mirror wrote that upstream removed (entries with prune set)",
        description=(
            'For every [[mirrors]] entry with prune = "deleted" or "unselected": delete from '
            "the target the tags its runs wrote that upstream removed (or, with unselected, "
            "no longer selects) for longer than prune_after. Never a tag mirror did not write, "
            "nor one re-pointed since, nor a digest a kept tag shares; each kept tag is listed "
            "with why. The registry frees the disk at its garbage collection. Exit 0 when "
            "nothing failed, 1 when a delete failed or the registry refuses deletes, 2 when no "
            "entry sets prune."
        ),
    )
    _with_config(prune)
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted; delete nothing"
    )
    prune.add_argument("--json", action="store_true", help="print the decisions as JSON")

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
    rules.add_argument(
        "--newest",
        type=int,
        metavar="N",
        help="only the N highest full versions (of each selected variant)",
    )
    rules.add_argument(
        "--aliases",
        action="store_true",
        help="also keep the moving aliases (2, 2.1, latest) whose newest version is selected",
    )
    rules.add_argument(
        "--prereleases", action="store_true", help="let pre-releases (1.2.3-rc.1) through"
    )
    rules.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME",
        help="only tags of this variant (alpine: 1.22-alpine, alpine; a glob such as 'alpine*'; "
        "'<none>': tags without one), within which --versions, --newest and --aliases apply; "
        "repeatable. Without it, --versions and --newest see only tags without a variant",
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
            return _until_signal(commands.sync_all_command(args))
        if args.command == "sync":
            return _until_signal(commands.sync_command(args))
        if args.command == "run":
            return _run(args)
        if args.command == "tags":
            return _until_signal(commands.tags_command(args))
        if args.command == "inventory":
            from mirror.airgap_commands import inventory_command

            return _until_signal(inventory_command(args))
        if args.command == "plan":
            return _until_signal(commands.plan_command(args))
        if args.command == "config":
            return commands.config_command(args)
        if args.command == "healthcheck":
            return commands.healthcheck_command(args)
        if args.command == "prune":
            from mirror.prune import prune_command

            return _until_signal(prune_command(args))
        if args.command in ("status", "history"):
            from mirror import records

            command = (
                records.status_command if args.command == "status" else records.history_command
            )
            return command(args)
    except MirrorError as exc:
        error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted; tags already written are complete, nothing else was tagged")
        return 130
    except asyncio.CancelledError:
        error("stopped by SIGTERM; tags already written are complete, nothing else was tagged")
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


def _run(args: argparse.Namespace) -> int:
    """``mirror run``: the daemon, until SIGTERM or SIGINT."""
    from mirror.config import config_path, load_config
    from mirror.daemon import Shard, serve
    from mirror.logs import configure_logging

    path = config_path(args.config)
    shard = Shard.parse(args.shard) if args.shard else None
    configure_logging(load_config(path).daemon.log_format, level=log_level(args))
    return asyncio.run(serve(path, shard=shard))
