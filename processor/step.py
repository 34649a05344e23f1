"""WorkflowStep: the API a workflow's `run` uses to do steps, sleep and wait for events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

from processor.durations import Duration
from processor.retry import RetryPolicy

if TYPE_CHECKING:
    from processor.engine.replay import Replay

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class ReceivedEvent:
    """An event taken by `wait_for_event`."""

    type: str
    payload: Any
    #: When the event reached Warren (aware UTC).
    timestamp: datetime


class WorkflowStep:
    """Named, memoized steps. Names are the memo keys: a repeated name gets an occurrence count.

    Every method is replay-safe: a step that completed in an earlier run returns its recorded
    result (or re-raises its recorded error) without running again.
    """

    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    @overload
    async def do(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    @overload
    async def do(
        self,
        name: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> T: ...

    async def do(
        self,
        name: str,
        fn: Callable[[*Ts], Any],
        *args: *Ts,
        retries: RetryPolicy | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run `fn(*args)` as a step, at least once, and return its result.

        An async `fn` runs on the event loop; a plain one in a worker thread. Its result must be
        JSON-serializable (pydantic models allowed) and at most 1 MiB. On replay the recorded
        result is returned as JSON, or as the pydantic model `fn`'s return annotation names.

        Args:
            name: the step's name, unique within the instance.
            fn: the step body; keyword arguments go through `functools.partial`.
            retries: how failures are retried (default: 5 retries, 10 s exponential).
            timeout: per attempt (default 10 minutes).

        Raises:
            StepFailedError: retries exhausted or a NonRetryableError, with the original error
                as `__cause__`.
        """
        return await self._replay.do(name, fn, args, retries, timeout)

    async def sleep(self, name: str, duration: Duration) -> None:
        """Sleep durably for up to 365 days; the instance holds no worker meanwhile."""
        await self._replay.sleep(name, duration)

    async def sleep_until(self, name: str, until: datetime) -> None:
        """Sleep until an aware datetime (at most 365 days ahead); a past one returns at once."""
        await self._replay.sleep_until(name, until)

    async def wait_for_event(
        self, name: str, *, type: str, timeout: Duration | None = None
    ) -> ReceivedEvent:
        """Wait for an event of `type` (default timeout 24 hours).

        Events sent before the wait are buffered and taken oldest first.

        Raises:
            EventTimeoutError: no event came in time (run may catch it).
        """
        return await self._replay.wait_for_event(name, type, timeout)
