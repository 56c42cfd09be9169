"""wait_for_status, the one poll loop of every adapter: what it reports, when it returns and what it raises."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared.executor.errors import CloudError
from shared.executor.wait import wait_for_status


def fetcher(*states: str) -> Callable[[], str]:
    seq: Iterator[str] = iter(states)
    return lambda: next(seq)


def wait(fetch: Callable[[], str], seen: list[str], timeout: float = 60.0, quiet: bool = False) -> str:
    return wait_for_status(
        fetch,
        state=lambda s: s,
        done=lambda s: s == "ACTIVE",
        describe=lambda s: f"server {s}",
        failed=lambda s: CloudError(f"server went to {s}", resource_id="x") if s == "ERROR" else None,
        slow=lambda s: CloudError(f"server still {s}", retriable=True),
        progress=seen.append,
        timeout=timeout,
        interval=0,
        quiet_if_ready=quiet,
    )


class TestWaitForStatus:
    def test_reports_each_new_state_once_and_returns_what_is_done(self) -> None:
        seen: list[str] = []
        assert wait(fetcher("BUILD", "BUILD", "SPAWNING", "ACTIVE"), seen) == "ACTIVE"
        assert seen == ["server BUILD", "server SPAWNING", "server ACTIVE"]

    def test_a_failed_state_raises_at_once_without_waiting_more(self) -> None:
        seen: list[str] = []
        with pytest.raises(CloudError) as raised:
            wait(fetcher("BUILD", "ERROR", "ACTIVE"), seen)
        assert (raised.value.message, raised.value.retriable, raised.value.resource_id) == (
            "server went to ERROR",
            False,
            "x",
        )
        assert seen == ["server BUILD", "server ERROR"]

    def test_past_the_deadline_it_raises_the_slow_error(self) -> None:
        seen: list[str] = []
        with pytest.raises(CloudError) as raised:
            wait(fetcher("BUILD", "BUILD"), seen, timeout=-1)
        assert (raised.value.message, raised.value.retriable) == ("server still BUILD", True)

    def test_quiet_if_ready_says_nothing_when_it_is_done_at_the_first_look(self) -> None:
        quiet: list[str] = []
        assert wait(fetcher("ACTIVE"), quiet, quiet=True) == "ACTIVE"
        assert quiet == []
        later: list[str] = []
        wait(fetcher("PENDING_UPDATE", "ACTIVE"), later, quiet=True)
        assert later == ["server PENDING_UPDATE", "server ACTIVE"]
