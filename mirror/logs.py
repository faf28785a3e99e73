"""Log set-up: structlog to stdout, JSON lines when not on a terminal, readable on one.

Owns the processor chain only, and how a line says its severity to systemd's journal. Modules
log with ``structlog.get_logger("mirror")`` and short lowercase events with stable keys; the
library layer does not log at all.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    import structlog

LogFormat = Literal["auto", "json", "console"]
# sd-daemon(3): a line that starts with "<N>" is logged by journald at syslog priority N, so
# `journalctl -p warning -u mirror` shows warnings and errors and nothing else.
SYSLOG_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}


def writes_to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to journald: systemd says so in ``JOURNAL_STREAM``
    (``DEVICE:INODE`` of the stream it handed the service), which a child's own pipe or a
    terminal does not match."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def journal_prefix(stream: TextIO, level: str) -> str:
    """``<3>`` and the like for a line at ``level`` written to the journal; "" elsewhere."""
    if not writes_to_journal(stream):
        return ""
    return f"<{SYSLOG_PRIORITIES.get(level, 6)}>"


def configure_logging(
    log_format: LogFormat = "auto", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send structlog's events at ``level`` and above to ``stream`` (stdout): JSON unless it is
    a terminal; each line prefixed with its syslog priority when the stream is the journal."""
    import structlog  # here: an error line of the command line needs only journal_prefix

    stream = stream or sys.stdout
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    if writes_to_journal(stream):
        processors.append(_with_priority)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _with_priority(_logger: Any, method_name: str, line: Any) -> Any:
    return f"<{SYSLOG_PRIORITIES.get(method_name, 6)}>{line}"
