"""Docker Hub's pull limit, played by a proxy rule: quota headers, and both kinds of 429.

``PullLimit`` is a ``RegistryProxy`` rule. It counts authenticated manifest GETs against a
budget (HEADs are free, as on Hub), adds ``ratelimit-limit: N;w=W`` and
``ratelimit-remaining`` to manifest answers, answers the pull-limit 429 with Docker's JSON
body once the budget is spent, and on demand answers plain 429s with ``Retry-After`` (the
abuse limit).
"""

from __future__ import annotations

import json
import threading

from tests.support.proxy import Action, Forward, ProxyRequest, Respond

PULL_LIMIT_BODY = json.dumps(
    {
        "errors": [
            {
                "code": "TOOMANYREQUESTS",
                "message": "You have reached your pull rate limit. You may increase the limit "
                "by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
            }
        ]
    }
).encode()


class PullLimit:
    """A pull budget of ``limit`` per ``window_s``, spent by manifest GETs."""

    def __init__(self, limit: int, window_s: int = 21600, *, announce: bool = True) -> None:
        """``announce=False`` sends no ratelimit headers (the client cannot see it coming)."""
        self.announce = announce
        self.limit = limit
        self.window_s = window_s
        self.remaining = limit
        self.pulls = 0  # manifest GETs served (what Hub counts)
        self.refused_pull_limit = 0
        self.refused_abuse = 0
        self._abuse: list[float] = []  # Retry-After of the next plain 429s, in order
        self._lock = threading.Lock()

    def abuse(self, count: int, retry_after_s: float = 1.0) -> None:
        """Answer the next ``count`` registry requests with a plain 429 and Retry-After."""
        with self._lock:
            self._abuse += [retry_after_s] * count

    def headers(self) -> dict[str, str]:
        if not self.announce:
            return {}
        return {
            "ratelimit-limit": f"{self.limit};w={self.window_s}",
            "ratelimit-remaining": f"{max(self.remaining, 0)};w={self.window_s}",
        }

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.listener != "registry":
            return None
        with self._lock:
            if self._abuse:
                retry_after = self._abuse.pop(0)
                self.refused_abuse += 1
                return Respond(
                    429,
                    b"Too Many Requests",
                    {"Retry-After": f"{retry_after:g}", "Content-Type": "text/plain"},
                )
            if request.kind != "manifest" or not request.has_authorization:
                return None  # anonymous first tries get a 401 upstream and are not pulls
            if request.method == "HEAD":
                return Forward(headers=self.headers())
            if request.method != "GET":
                return None
            if self.remaining <= 0:
                self.refused_pull_limit += 1
                return Respond(
                    429,
                    PULL_LIMIT_BODY,
                    {"Content-Type": "application/json", **self.headers()},
                )
            self.remaining -= 1
            self.pulls += 1
            return Forward(headers=self.headers())
