"""mirror: keep a local registry in step with images on Docker Hub (or any registry).

The library layer (``reference``, ``manifest``, ``auth``, ``registry``, ``copy``) knows nothing
of config files, schedules or logging set-up; the application layer (``config``, ``jobs``,
``cli``) builds on it. Import submodules directly: this package keeps start-up cheap.
"""

import sys

__version__ = "0.1.0"

# httpx imports its own command-line client (click, rich, pygments) whenever those happen to
# be installed, and apprise brings click: ~120 ms on every start of `mirror`, for a CLI mirror
# never runs. Marking it absent makes httpx skip it (its ImportError fallback).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
