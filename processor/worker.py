"""The worker: consumes the ingress queue and the run and wake queues of the workflows it
serves."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from sqlmodel.ext.asyncio.session import AsyncSession

from processor.broker.topology import ready_count
from processor.consumers.base import Handler, hand_back, settle
from processor.consumers.ingress import IngressConsumer
from processor.consumers.runs import RunConsumer, carries_report, is_wake_up_group
from processor.consumers.slots import Slots
from processor.engine.replay import REPORT_CEILING, REPORT_DELIVERY_GRACE, WORKER_STALE, Claimant
from processor.errors import InfrastructureError
from processor.runtime import RELAY_AFTER, Runtime
from processor.store import queries
from processor.store.database import is_unreachable
from processor.store.tables import InstanceRow, StepRow
from processor.telemetry.http import TelemetryServer
from processor.telemetry.metrics import Metrics, setup_metrics
from processor.telemetry.tracing import is_tracing, trace_sql
from processor.workflow import Workflow, build_registry

log = logging.getLogger("warren.worker")

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]

#: Past this lateness a wake-up is republished by the sweeper: the delay cascade restarts a
#: level's clock after a broker outage, so SQL's due time is the truth.
SWEEP_GRACE = timedelta(seconds=5)
#: How late after its due time a wake-up may leave the delay cascade (its lateness p99 is
#: about 0.1-0.3 s): one later than this may be swept once more, which only costs a round.
CASCADE_LAG = timedelta(seconds=1)
#: A timer overdue by this is swept even if its wake queue was never seen empty since.
TIMER_SWEEP_CEILING = timedelta(seconds=60)
SWEEP_INTERVAL_S = 1.0
#: A run message (for now) not taken within this, and published before its run queue was
#: last seen empty, is presumed lost and published again (see `Worker.sweep_lost_runs`).
RUN_GRACE = timedelta(seconds=60)
#: Well inside WORKER_STALE, so a live worker is never taken for dead.
HEARTBEAT_INTERVAL_S = 2.0
RELAY_INTERVAL_S = 2.0
#: How long after its `run_due_at` (the start of the transaction that emitted it) a run message
#: may reach its queue: its writer publishes it after the commit, else the relay RELAY_AFTER on.
PUBLISH_LAG = RELAY_AFTER + timedelta(seconds=RELAY_INTERVAL_S)
#: Reading a queue's depth longer than this (the broker is away) counts as a failed read.
DEPTH_READ_TIMEOUT_S = 5.0
#: A delivery that waits this long for a free slot goes back to its queue as a fresh copy,
#: far inside RabbitMQ's consumer_timeout (30 minutes by default).
SLOT_WAIT_S = 60.0
#: A step's report waits this long for a free slot, then is recorded without one: well
#: within REPORT_DELIVERY_GRACE, the time a delivered report has to be recorded. Recording
#: it at once instead cost a round more per step whenever the slots were busy (PostgreSQL
#: throughput 1,026 / 1,026 -> 863 / 735 steps/s).
REPORT_SLOT_WAIT_S = 1.0
#: Processed ingress message ids are kept this long for deduplication.
DEDUP_RETENTION = timedelta(days=7)
#: A worker that has not beaten for this long loses its row (its attempts were long lost).
WORKER_RETENTION = timedelta(days=1)
#: How often the gauges read from SQL (instances by status, outbox backlog) are refreshed.
GAUGE_REFRESH_S = 15.0


def tune_garbage_collector() -> None:
    """Collect the young generation after 10,000 allocations rather than 700, once the worker
    has started (what it holds then is frozen out of every collection). A round allocates
    thousands of short-lived objects (rows, messages, spans), so with the default threshold
    the collector ran many times a round, and each run walked the objects of the rounds in
    flight: a worker does 15% more steps a second (PostgreSQL, 1,000 x 10 steps, one worker,
    two runs each: 857 / 826 -> 990 / 978 steps/s). Collections of the older generations stay
    as frequent relative to it, so garbage in reference cycles is still reclaimed within
    seconds."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class Worker:
    """Runs workflows: `async with Worker(...):` consumes until the block exits.

    Args:
        workflows: the Workflow classes this worker serves; it consumes only their run and wake
            queues (plus the shared ingress queue), so workers with different sets share a
            broker.
        broker_url: default `WARREN_BROKER_URL`.
        database_url: default `WARREN_DATABASE_URL`.
        concurrency: messages (instances) handled at once by this process.
        namespace: prefix of queues and exchanges (default `WARREN_NAMESPACE` or "warren").
        shutdown_grace: seconds in-flight steps get to finish on stop; unfinished ones are
            released unacked and redelivered to another worker.
        http_port: serve `/healthz`, `/readyz` and `/metrics` on this port (0: any free one,
            see `telemetry_port`); None (the default) serves nothing. Metrics are
            per process: give one worker per process a port.
        http_host: the address to serve them on.
    """

    def __init__(
        self,
        workflows: Iterable[type[Workflow[Any]]],
        *,
        broker_url: str | None = None,
        database_url: str | None = None,
        concurrency: int = 100,
        namespace: str | None = None,
        database_schema: str | None = None,
        shutdown_grace: float = 30.0,
        http_port: int | None = None,
        http_host: str = "0.0.0.0",
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.registry = build_registry(workflows)
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.runtime = Runtime(
            broker_url=broker_url,
            database_url=database_url,
            namespace=namespace,
            database_schema=database_schema,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="warren-step"
        )
        self._subscriptions: list[tuple[AbstractQueue, OnMessage]] = []
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._runs: RunConsumer | None = None
        self._background: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._is_consuming = False
        self._slots = Slots(concurrency)
        self.claimant = Claimant(uuid.uuid4().hex)
        self._has_beaten = False
        self.http_port = http_port
        self.http_host = http_host
        self._metrics: Metrics | None = None
        self._telemetry: TelemetryServer | None = None
        #: Reads the queues' depth for the sweeps, apart from the consumers: a passive
        #: declare of a queue someone deleted closes its channel.
        self._depth_channel: AbstractChannel | None = None
        #: Per workflow, when its wake queue was last seen with no ready message (DB clock;
        #: the run queues' readings are the Claimant's `run_drained_at`).
        self._wake_drained_at: dict[str, datetime] = {}
        #: Per queue, its deliveries waiting for a slot (unacked, so not counted as ready).
        self._waiting_for_slots: Counter[str] = Counter()

    @property
    def is_consuming(self) -> bool:
        """Started, consuming every queue, and not stopping."""
        return self._is_consuming

    @property
    def telemetry_port(self) -> int | None:
        """The port serving `/healthz`, `/readyz` and `/metrics`; None if none is served."""
        return None if self._telemetry is None else self._telemetry.port

    def is_ready(self) -> dict[str, bool]:
        """The readiness checks `/readyz` reports: broker, database, consuming."""
        connection = self.runtime.connection
        return {
            "broker": connection is not None and connection.connected.is_set(),
            "database": not self.runtime.database.outage.is_set(),
            "consuming": self._is_consuming,
        }

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect, register the workflows, declare the queues and start consuming.

        Raises:
            DatabaseNotMigratedError: the database lacks Warren's tables.
            InfrastructureError: the broker cannot be reached.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        runtime = self.runtime
        if self.http_port is not None:
            # First: liveness answers (and readiness says why not) while the broker is awaited.
            self._metrics = setup_metrics()
            self._telemetry = TelemetryServer(
                self._metrics.registry,
                {name: functools.partial(self._check, name) for name in self.is_ready()},
            )
            try:
                await self._telemetry.start(self.http_host, self.http_port)
            except OSError as error:  # the port is taken, say
                raise InfrastructureError(
                    f"cannot serve /healthz, /readyz and /metrics on {self.http_host}:"
                    f"{self.http_port}: {error} (each worker on a host needs a port of its own: "
                    "--http-port or WARREN_HTTP_PORT picks another, off none)"
                ) from error
        if is_tracing():
            trace_sql(runtime.database.engine.sync_engine)
        await runtime.open(connect_for=60.0)
        async with runtime.transaction() as tx:
            await queries.register_workflows(tx.session, sorted(self.registry), tx.now)
        await self._beat()
        assert runtime.connection is not None
        channel = await runtime.connection.channel()
        await channel.set_qos(prefetch_count=self.concurrency)
        topology = runtime.topology
        ingress = IngressConsumer(runtime, self.concurrency)
        self._subscribe(
            await topology.declare_ingress_queue(channel),
            ingress.handle,
            without_slot=lambda _: ingress.handle,  # see IngressConsumer.handle
        )
        runs = self._runs = RunConsumer(
            runtime,
            self.registry,
            self.claimant,
            self._executor,
            self._slots,
            lambda: self._is_consuming,
        )
        for name in sorted(self.registry):
            run_queue, wake_queue = await topology.declare_run_queues(channel, name)
            record_only = functools.partial(runs.handle, name, may_claim=False)
            self._subscribe(
                run_queue,
                functools.partial(runs.handle, name),
                without_slot=runs.recorded_already,
                if_no_slot=functools.partial(_record_if_report, record_only),
            )
            self._subscribe(
                wake_queue,
                functools.partial(runs.handle, name, wake_up=True),
                wake_ups=True,
                without_slot=functools.partial(
                    _group_without_slot, functools.partial(runs.wake_group, name)
                ),
            )
        self._depth_channel = await runtime.connection.channel()
        await self._start_consuming()
        self._heartbeat = asyncio.create_task(self._every(HEARTBEAT_INTERVAL_S, self._beat))
        self._background = [
            asyncio.create_task(self._every(SWEEP_INTERVAL_S, self.sweep_overdue_timers)),
            asyncio.create_task(self._every(SWEEP_INTERVAL_S, self._release_dropped_attempts)),
            asyncio.create_task(self._every(SWEEP_INTERVAL_S, self.sweep_orphaned_attempts)),
            asyncio.create_task(self._every(SWEEP_INTERVAL_S, self.sweep_lost_runs)),
            asyncio.create_task(self._every(RELAY_INTERVAL_S, runtime.relay_stale_outbox)),
            asyncio.create_task(self._every(3600, self._forget_old_message_ids)),
            asyncio.create_task(self._pause_during_database_outages()),
        ]
        if self._metrics is not None:
            try:
                await self._refresh_gauges()
            except Exception as error:  # the periodic refresh tries again
                log.warning("reading the gauges failed: %r", error)
            self._background.append(
                asyncio.create_task(self._every(GAUGE_REFRESH_S, self._refresh_gauges))
            )
        log.info("worker serving %s", ", ".join(sorted(self.registry)))

    def _subscribe(
        self,
        queue: AbstractQueue,
        handler: Handler,
        *,
        wake_ups: bool = False,
        without_slot: Callable[[AbstractIncomingMessage], Handler | None] | None = None,
        if_no_slot: Callable[[AbstractIncomingMessage], Handler | None] | None = None,
    ) -> None:
        """Consume `queue` with `handler`, each message in a concurrency slot (`wake_ups`:
        the queue's messages are wake-ups, see consumers/slots.py). A message for which
        `without_slot` gives a handler is handled by that one at once, without a slot; one
        for which `if_no_slot` gives a handler, by that one without a slot if none frees
        within REPORT_SLOT_WAIT_S."""

        async def handle(message: AbstractIncomingMessage) -> None:
            slotless = without_slot(message) if without_slot is not None else None
            if slotless is not None:
                await settle(self.runtime, queue.name, message, slotless)
                return
            fallback = if_no_slot(message) if if_no_slot is not None else None
            # Prefetch is per queue (quorum queues have no channel-wide QoS): the slots make
            # `concurrency` a limit for the whole worker.
            # A timer and the count of waiting deliveries only when it may wait: a free slot is
            # taken without suspending (the timer cost 2% of the CPU per step).
            waits = self._slots.locked()
            if waits:
                self._waiting_for_slots[queue.name] += 1
            try:
                if waits:
                    async with asyncio.timeout(REPORT_SLOT_WAIT_S if fallback else SLOT_WAIT_S):
                        await self._slots.acquire(wake_up=wake_ups)
                else:
                    await self._slots.acquire(wake_up=wake_ups)
            except TimeoutError:
                if fallback is not None:
                    await settle(self.runtime, queue.name, message, fallback)
                    return
                # Every slot is busy with long steps: an unacked delivery held much longer
                # would pass the broker's consumer_timeout, which closes the whole channel.
                await hand_back(self.runtime, queue.name, message)
                return
            finally:
                if waits:
                    self._waiting_for_slots[queue.name] -= 1
            try:
                await settle(self.runtime, queue.name, message, handler)
            finally:
                self._slots.release()

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(handle(message))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        self._subscriptions.append((queue, on_message))

    async def _start_consuming(self) -> None:
        for queue, on_message in self._subscriptions:
            self._consumer_tags.append((queue, await queue.consume(on_message)))
        self._is_consuming = True

    async def _stop_consuming(self) -> None:
        """Take no more messages; those in flight go on (and are acked or released)."""
        self._is_consuming = False
        for queue, tag in self._consumer_tags:
            with suppress(Exception):
                await queue.cancel(tag)
        self._consumer_tags.clear()

    async def _pause_during_database_outages(self) -> None:
        """While the database is down, take no messages: each would only wait out its
        patience and go back to the queue, a step nearer the dead-letter queue. The ones in
        flight keep retrying and are applied when the database returns."""
        database = self.runtime.database
        while True:
            await database.outage.wait()
            log.warning("the database is unavailable: taking no messages until it answers")
            await self._stop_consuming()
            await database.wait_until_available()
            while True:  # the broker may be away too (its channel still being restored)
                try:
                    await self._start_consuming()
                    break
                except Exception as error:
                    log.warning("consuming again failed, trying again: %r", error)
                    await self._stop_consuming()
                    await asyncio.sleep(1)
            log.info("the database answers again: consuming")

    async def stop(self) -> None:
        """Stop taking messages, give in-flight work `shutdown_grace` to finish, cancel the
        rest, and disconnect. Unacked messages go back to their queue; cancelled attempts are
        released, so other workers retry them at once."""
        for task in self._background:  # first: the outage watcher would consume again
            task.cancel()
        await self._stop_consuming()
        # Until none is left: a delivery that arrived before the consumers were cancelled
        # may start its handler after a first look at the set.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        while self._inflight:
            in_flight = set(self._inflight)
            _, pending = await asyncio.wait(in_flight, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._runs is not None:  # transactions under way get the grace too
            await self._runs.aclose(self.shutdown_grace)
        # Only now: while it drains, a worker beats, so nobody takes its attempts for lost.
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._background.append(self._heartbeat)
            self._heartbeat = None
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        # Attempts it will not report (cancelled above) are released: other workers retry
        # them at once. The ones it reported stay its own until their reports are recorded
        # (see Replay._attempt_is_lost): its row stays, its heartbeat ages. Every task that
        # could report is over now, so an attempt still counted as running was claimed and
        # never started (its message acked, its follow-up cancelled before it began).
        self.claimant.drop(list(self.claimant.running))
        try:
            await self._release_dropped_attempts()
        except Exception as error:  # they are taken for lost once the heartbeat is stale
            log.warning("releasing the attempts this worker will not report failed: %r", error)
        await self.runtime.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._telemetry is not None:
            await self._telemetry.stop()
            self._telemetry = None
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics = None

    async def run(self) -> None:
        """Run until cancelled, SIGTERM or SIGINT, then stop gracefully. The process is the
        worker's: it sets the signal handlers and tunes the garbage collector
        (`tune_garbage_collector`)."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            async with self:
                tune_garbage_collector()
                await stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def sweep_overdue_timers(self) -> int:
        """Wake instances whose timer is overdue (its delayed message was lost, or held up in
        the cascade by a broker outage) or whose running attempt's lease ran out. Returns how
        many instances were woken.

        A sleep, back-off or event timeout counts as overdue SWEEP_GRACE after its due time,
        once its wake queue has been seen with no ready message CASCADE_LAG after it: a wake-up
        that left the cascade by then had been delivered, so a timer still not acted on lost
        its message. A backlog holds wake-ups up without losing them, and taking them for lost
        added a copy of most late ones (7,578 for the benchmark's 10,000 sleepers, when they
        shared the run queue), just when the workers were behind. A timer overdue by
        TIMER_SWEEP_CEILING is swept whatever the queue showed (a backlog that never drains, a
        queue whose depth cannot be read), once per ceiling. A lapsed lease is swept once the
        round it wakes will take the attempt for lost (Replay._attempt_is_lost): its run queue
        seen empty REPORT_DELIVERY_GRACE after the lease ran out, so no report of it is still
        queued, or REPORT_CEILING after it; swept every few seconds instead, an instance whose
        report waits behind a backlog got a round that parked again each time.
        """
        names = sorted(self.registry)
        await self._note_drained(
            names, self.runtime.topology.wake_queue, self._wake_drained_at, self._holds_wake_ups
        )

        def find(
            session: AsyncSession, now: datetime
        ) -> Awaitable[list[tuple[StepRow, InstanceRow]]]:
            cutoff = now - SWEEP_GRACE
            ceiling = now - TIMER_SWEEP_CEILING
            timer_cutoffs = {name: ceiling for name in names}
            for name, drained in self._wake_drained_at.items():
                timer_cutoffs[name] = max(ceiling, min(cutoff, drained - CASCADE_LAG))
            report_ceiling = now - REPORT_CEILING
            lease_cutoffs = {name: report_ceiling for name in names}
            for name, drained in self.claimant.run_drained_at.items():
                if name in lease_cutoffs:
                    reported_by = drained - REPORT_DELIVERY_GRACE
                    lease_cutoffs[name] = max(report_ceiling, min(cutoff, reported_by))
            return queries.overdue_steps(session, timer_cutoffs, lease_cutoffs, 500)

        return await self._wake(find, "overdue timers")

    def _holds_wake_ups(self, workflow: str) -> bool:
        """Whether wake-ups of `workflow` were delivered here and wait for slots, unacked
        (lone ones, or instances of groups: RunConsumer.holds_wake_ups)."""
        if self._runs is None:
            raise RuntimeError("the worker is not started")
        wake_queue = self.runtime.topology.wake_queue(workflow)
        return self._waiting_for_slots[wake_queue] > 0 or self._runs.holds_wake_ups(workflow)

    async def sweep_orphaned_attempts(self) -> int:
        """Wake instances with a running attempt whose worker stopped beating (it crashed)
        before its run queue was last seen empty, so no report of it is still on its way, or
        over REPORT_CEILING ago: their replay presumes the attempt lost and retries it (see
        Replay._attempt_is_lost). Returns how many were woken."""
        if not self.claimant.trusts_heartbeats(self.runtime.clock.now()):
            return 0
        drained_at = self.claimant.run_drained_at

        def find(
            session: AsyncSession, now: datetime
        ) -> Awaitable[list[tuple[StepRow, InstanceRow]]]:
            ceiling = now - REPORT_CEILING - WORKER_STALE
            last_beats = {name: ceiling for name in self.registry}
            for name, drained in drained_at.items():
                if name in last_beats:
                    reported_by = min(now, drained - REPORT_DELIVERY_GRACE)
                    last_beats[name] = max(ceiling, reported_by - WORKER_STALE)
            return queries.orphaned_steps(session, last_beats, now - WORKER_STALE, 500)

        return await self._wake(find, "attempts whose worker died")

    async def sweep_lost_runs(self) -> int:
        """Wake instances whose run message was lost (say, dead-lettered after a crash loop):
        owed a round for over RUN_GRACE, and since before their run queue was last seen empty.
        Returns how many were woken.

        A run queue is a FIFO quorum queue: a message in it before the moment it showed no
        ready message had been delivered by then (one handed back is in the queue again, so
        its instance is not lost either). A long backlog only holds messages up, and a sweep
        on age alone took every queued message for lost and republished it, adding load just
        when the workers were behind (71,410 messages queued for 10,000 instances in the
        benchmark). A workflow whose run queue this worker has never seen empty is not swept;
        nor is any while no depth can be read (the broker is away). A woken instance's
        `run_due_at` moves twice its wait ahead, past the copy published now: another copy
        needs the queue seen empty after this one, and a round that keeps failing to happen
        costs ever fewer copies.
        """
        names = sorted(self.registry)
        drained_at = self.claimant.run_drained_at
        if not await self._note_drained(names, self.runtime.topology.run_queue, drained_at):
            return 0  # the broker is away: what it would publish could not go out
        if not drained_at:
            return 0
        async with self.runtime.transaction() as tx:
            # PUBLISH_LAG: a message is published a moment after its run_due_at, so only one
            # due that long before the queue was seen empty was surely in the queue by then.
            cutoffs = {
                name: min(tx.now - RUN_GRACE, drained - PUBLISH_LAG)
                for name, drained in drained_at.items()
            }
            instances = await queries.overdue_runs(tx.session, cutoffs, 500)
            for instance in instances:
                assert instance.run_due_at is not None
                instance.run_due_at = tx.now + (tx.now - instance.run_due_at)
                tx.emit_run(instance)
        if instances:
            log.warning("sweeper woke %d instances whose run message was lost", len(instances))
        return len(instances)

    async def _note_drained(
        self,
        names: list[str],
        queue_of: Callable[[str], str],
        drained_at: dict[str, datetime],
        unless: Callable[[str], bool] = lambda name: False,
    ) -> bool:
        """Record in `drained_at` the workflows whose queue (`queue_of(workflow)`) has no
        ready message now: the time noted is taken before the read, so whatever was published
        before it was delivered by then. Each queue is read on its own, so one that cannot be
        read (deleted, say) leaves the others' readings, and an earlier reading stays true.
        Nothing is recorded for a workflow for which `unless(workflow)` before or after the
        read (messages of it were delivered and wait here, unacked). Returns whether any was
        read."""
        channel = self._depth_channel
        if channel is None:
            raise RuntimeError("the worker is not started")
        failures = []
        for name in names:
            queue = queue_of(name)
            read_at = self.runtime.clock.now()
            held = unless(name)
            try:
                async with asyncio.timeout(DEPTH_READ_TIMEOUT_S):
                    ready = await ready_count(channel, queue)
            except Exception as error:  # the next sweep reads again
                failures.append(f"{queue}: {error!r}")
                continue
            if ready == 0 and not held and not unless(name):
                drained_at[name] = read_at
        if failures:
            log.warning("reading queue depths failed: %s", "; ".join(failures))
        return len(failures) < len(names)

    async def _wake(
        self,
        find: Callable[[AsyncSession, datetime], Awaitable[list[tuple[StepRow, InstanceRow]]]],
        why: str,
    ) -> int:
        """Publish a wake-up, due now, for each instance with a step `find` returns, and mark
        those steps swept so the next sweep leaves them alone for a while. It goes to the wake
        queue, whose readings decide when a timer is swept again."""
        async with self.runtime.transaction() as tx:
            woken = {}
            for step, instance in await find(tx.session, tx.now):
                step.swept_at = tx.now
                woken[instance.id] = instance
            for instance in woken.values():
                tx.emit_run(instance, wake_at=tx.now)
        if woken:
            log.info("sweeper woke %d instances: %s", len(woken), why)
        return len(woken)

    async def _beat(self) -> None:
        """Record that this worker is alive, and measure the database's clock."""
        runtime = self.runtime
        try:
            async with runtime.database.transaction() as session:
                await runtime.sync_clock(session)
                await queries.beat(session, self.claimant.worker_id, runtime.clock.now())
        except Exception as error:
            self.claimant.beating_since = None
            if is_unreachable(error):
                runtime.database.outage.set()
            raise
        if self.claimant.beating_since is None:
            # The first beat trusts other heartbeats at once; after a failed one (a database
            # outage), wait WORKER_STALE for the live workers to catch up.
            now = runtime.clock.now()
            self.claimant.beating_since = now if self._has_beaten else now - WORKER_STALE
        self._has_beaten = True

    def _check(self, name: str) -> bool:
        return self.is_ready()[name]

    async def _refresh_gauges(self) -> None:
        """Read the instance counts by status and the outbox backlog for the gauges."""
        assert self._metrics is not None
        async with self.runtime.database.read() as session:
            counts = await queries.count_instances(session)
            backlog = await queries.count_outbox(session)
        by_status: dict[str, int] = {}
        for _workflow, status, count in counts:
            by_status[status] = by_status.get(status, 0) + count
        self._metrics.set_instance_counts(by_status)
        self._metrics.set_outbox_backlog(backlog)

    async def _release_dropped_attempts(self) -> None:
        """Release the attempts this process claimed and will not report (see
        `Claimant.dropped`), and wake their instances."""
        dropped = sorted(self.claimant.dropped)
        if not dropped:
            return
        async with self.runtime.transaction() as tx:
            released = await queries.release_attempts(tx.session, self.claimant.worker_id, dropped)
            for instance in released:
                tx.emit_run(instance)
        self.claimant.dropped.difference_update(dropped)

    async def _forget_old_message_ids(self) -> None:
        async with self.runtime.transaction() as tx:
            await queries.delete_processed_before(tx.session, tx.now - DEDUP_RETENTION)
            await queries.forget_workers_before(tx.session, tx.now - WORKER_RETENTION)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as error:  # the next run tries again
                log.warning("%s failed: %r", getattr(job, "__name__", job), error)


def _record_if_report(record: Handler, message: AbstractIncomingMessage) -> Handler | None:
    """A step's report that waited REPORT_SLOT_WAIT_S for a slot is recorded without one,
    claiming nothing (see RunConsumer.handle)."""
    return record if carries_report(message) else None


def _group_without_slot(wake_group: Handler, message: AbstractIncomingMessage) -> Handler | None:
    """A wake-up carrying several instances is taken on arrival (see RunConsumer.wake_group)."""
    return wake_group if is_wake_up_group(message) else None
