"""Publishing a step's report (engine/rounds.py, `_publish_report`): one not recorded yet
exists only in its worker, so its publish is tried until it succeeds; one recorded already
is given up after one try, or RECORDED_PUBLISH_S, so that a broker outage piles nothing up."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from processor.engine import rounds


class Broker:
    """A publisher whose first `failures` publishes fail and, with `hangs`, the rest wait for
    ever (as aio-pika's robust channel does while the connection is away)."""

    def __init__(self, failures: int = 0, hangs: bool = False) -> None:
        self.failures = failures
        self.hangs = hangs
        self.tries: list[dict[str, Any]] = []
        self.published: list[str] = []

    async def publish_run(
        self, workflow: str, body: bytes, message_id: str, **options: Any
    ) -> None:
        self.tries.append(options)
        if len(self.tries) <= self.failures:
            raise ConnectionError("the broker is away")
        if self.hangs:
            await asyncio.Event().wait()
        self.published.append(message_id)


def runtime(broker: Broker) -> Any:
    return SimpleNamespace(publisher=broker)


async def test_a_report_not_recorded_is_published_however_many_tries_it_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rounds, "REPORT_RETRY_S", (0.001, 0.002))
    broker = Broker(failures=3)
    await rounds._publish_report(runtime(broker), "w", "step", b"{}", False)
    assert len(broker.tries) == 4
    assert len(broker.published) == 1
    assert all(options == {"recorded": False} for options in broker.tries)


async def test_a_recorded_report_is_given_up_after_one_failed_try() -> None:
    broker = Broker(failures=1)
    await rounds._publish_report(runtime(broker), "w", "step", b"{}", True)
    assert broker.tries == [{"recorded": True}]
    assert broker.published == []


async def test_a_recorded_reports_publish_that_hangs_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rounds, "RECORDED_PUBLISH_S", 0.05)
    broker = Broker(hangs=True)
    await asyncio.wait_for(
        rounds._publish_report(runtime(broker), "w", "step", b"{}", True), timeout=5
    )
    assert broker.tries == [{"recorded": True}]
    assert broker.published == []
