"""Waiting for a cloud resource to reach a state: the one poll-until-deadline loop of every adapter."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from shared.executor.errors import CloudError
from shared.executor.models import Progress

T = TypeVar("T")


def wait_for_status(
    fetch: Callable[[], T],
    *,
    state: Callable[[T], Hashable],
    done: Callable[[T], bool],
    describe: Callable[[T], str],
    slow: Callable[[T], CloudError],
    progress: Progress,
    timeout: float,
    interval: float,
    failed: Callable[[T], CloudError | None] = lambda _: None,
    quiet_if_ready: bool = False,
) -> T:
    """Poll ``fetch()`` every ``interval`` seconds until ``done``; return what it fetched last.

    Each new ``state`` is reported through ``progress`` as ``describe`` puts it (not when ``quiet_if_ready``
    and it is done at the first look). Raises ``failed``'s CloudError as soon as it gives one, and
    ``slow``'s (retriable, as a rule: waiting again may help) once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    first = True
    seen: Hashable = object()
    while True:
        current = fetch()
        key = state(current)
        ready = done(current)
        if key != seen:
            if not (first and ready and quiet_if_ready):
                progress(describe(current))
            seen = key
        if ready:
            return current
        error = failed(current)
        if error is not None:
            raise error
        if time.monotonic() > deadline:
            raise slow(current)
        first = False
        time.sleep(interval)
