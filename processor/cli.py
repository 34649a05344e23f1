"""The `warren` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from rich.live import Live
from rich.progress import Progress

from processor import config
from processor.broker import admin
from processor.broker.topology import Topology
from processor.client import MAX_BATCH, Client
from processor.console import instances_table, make_console, status_view, usage_table
from processor.durations import parse_duration
from processor.errors import InfrastructureError, ProcessorError
from processor.runtime import run_event_loop
from processor.store import queries
from processor.store.database import Database
from processor.telemetry.logs import configure_logging
from processor.telemetry.tracing import setup_tracing
from processor.worker import Worker
from processor.workflow import Workflow
from schemas import ControlAction, InstanceStatusName


def find_workflows(module_names: list[str]) -> list[type[Workflow[Any]]]:
    """Every Workflow subclass defined in or imported into the named modules."""
    found: dict[int, type[Workflow[Any]]] = {}
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Workflow)
                and value is not Workflow
                and not inspect.isabstract(value)
            ):
                found[id(value)] = value
        if not found:
            raise SystemExit(f"warren: no Workflow subclass found in module {module_name!r}")
    return list(found.values())


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "broker_url": args.broker_url,
        "database_url": args.database_url,
        "namespace": args.namespace,
    }


async def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, ".")
    workflows = find_workflows(args.modules)
    names = ", ".join(sorted(w.name for w in workflows))
    port = config.http_port(args.http_port)
    served = "" if port is None else f"; /healthz, /readyz and /metrics on port {port}"
    print(f"warren worker: starting, for {names}{served}", file=sys.stderr)
    worker = Worker(workflows, concurrency=args.concurrency, http_port=port, **_settings(args))
    await worker.run()


async def _create(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    if args.count > 1 and args.id is not None:
        raise ValueError("--id names one instance: leave it out with --count")
    async with Client(**_settings(args)) as client:
        if args.count == 1:
            instance = await client.create(args.workflow, args.params, id=args.id)
            print(instance.id)
            return
        with Progress(console=make_console(stderr=True)) as progress:
            task = progress.add_task(f"creating {args.count} instances", total=args.count)
            for start in range(0, args.count, MAX_BATCH):
                batch = min(MAX_BATCH, args.count - start)
                items = [{"params": args.params} for _ in range(batch)]
                for instance in await client.create_batch(args.workflow, items):
                    print(instance.id)
                progress.advance(task, batch)


async def _status(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        status = await client.status(args.id)
        if args.json:
            print(status.model_dump_json(indent=2))
            return
        console = make_console()
        if not args.watch:
            console.print(status_view(status, client.runtime.clock.now()))
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(status_view(status, client.runtime.clock.now()), refresh=True)
                if status.status.is_terminal:
                    break
                await asyncio.sleep(WATCH_INTERVAL_S)
                status = await client.status(args.id)


#: How long `warren db upgrade` and `warren dlq` wait for an unreachable database (a migration
#: job may start beside it), as a client waits for the broker.
DB_COMMAND_CONNECT_S = 10.0
#: How often `warren status --watch` reads the instance again.
WATCH_INTERVAL_S = 0.5


async def _list(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        page = await client.list_page(workflow=args.workflow, status=args.status, limit=args.limit)
        now = client.runtime.clock.now()
    if args.json:
        print(json.dumps([item.model_dump(mode="json") for item in page.instances], indent=2))
    else:
        make_console().print(instances_table(page.instances, now))


def _since(text: str) -> datetime:
    """`--since`: a duration back from now (`7 days`) or an ISO time (UTC if it names no zone)."""
    try:
        return datetime.now(UTC) - parse_duration(text, what="--since")
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration ('7 days') nor an ISO time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _usage(args: argparse.Namespace) -> None:
    since = _since(args.since) if args.since is not None else None
    async with Client(**_settings(args)) as client:
        usage = await client.usage(workflow=args.workflow, since=since)
    if args.json:
        print(json.dumps([row.model_dump(mode="json") for row in usage], indent=2))
    else:
        make_console().print(usage_table(usage))


async def _send_event(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        await client.send_event(args.id, args.type, args.payload)


def _control(action: ControlAction) -> Callable[[argparse.Namespace], Coroutine[Any, Any, None]]:
    async def apply(args: argparse.Namespace) -> None:
        async with Client(**_settings(args)) as client:
            await client.control(args.id, action)
            print(f"{action.value}: {args.id} is now {(await client.status(args.id)).status}")

    return apply


async def _db_upgrade(args: argparse.Namespace) -> None:
    url = config.database_url(args.database_url)
    database = Database(url)
    try:
        before, after = await database.upgrade(connect_for=DB_COMMAND_CONNECT_S)
    finally:
        await database.close()
    if before == after:
        print(f"database at {config.redact_url(url)} is up to date (migration {after})")
    else:
        print(f"database at {config.redact_url(url)} migrated from {before or 'none'} to {after}")


async def _dead_letter_queues(
    args: argparse.Namespace, dead_letters: admin.DeadLetters
) -> list[str]:
    """`--queue`, or every dead queue of the namespace: the ingress queue's and those of the
    workflows registered in the database."""
    if args.queue:
        return [args.queue]
    database = Database(config.database_url(args.database_url))
    try:
        await database.check_migrated(connect_for=DB_COMMAND_CONNECT_S)
        async with database.read() as session:
            workflows = await queries.registered_workflows(session)
    finally:
        await database.close()
    return await dead_letters.existing(dead_letters.queues(workflows))


def _printable(text: str, width: int | None = None) -> str:
    """One line of text: control characters escaped, cut at `width` characters."""
    cut = text if width is None or len(text) <= width else text[: width - 3] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


@asynccontextmanager
async def _operator_connection(args: argparse.Namespace) -> AsyncIterator[AbstractConnection]:
    """A broker connection for one operator command; a refusal becomes a one-line error."""
    async with await admin.connect(config.broker_url(args.broker_url)) as connection:
        try:
            yield connection
        except aio_pika.exceptions.AMQPError as error:
            raise InfrastructureError(f"the broker refused: {error!r}") from error


async def _dlq_list(args: argparse.Namespace) -> None:
    async with _operator_connection(args) as connection:
        dead_letters = admin.DeadLetters(connection, Topology(config.namespace(args.namespace)))
        queues = await _dead_letter_queues(args, dead_letters)
        found = await dead_letters.list(queues, limit=args.limit)
        total = sum([await dead_letters.count(queue) for queue in queues])
    for letter in found:
        when = letter.dead_at.isoformat() if letter.dead_at else "-"
        body = _printable(letter.body.decode("utf-8", "backslashreplace"), 80)
        print(
            "\t".join([letter.queue, _printable(letter.id), when, _printable(letter.reason), body])
        )
    print(f"{len(found)} of {total} dead-lettered messages shown", file=sys.stderr)


async def _dlq_redrive(args: argparse.Namespace) -> None:
    if bool(args.ids) == args.all:
        raise ValueError("name the ids of the messages to redrive, or pass --all")
    async with _operator_connection(args) as connection:
        dead_letters = admin.DeadLetters(connection, Topology(config.namespace(args.namespace)))
        queues = await _dead_letter_queues(args, dead_letters)
        report = await dead_letters.redrive(queues, None if args.all else args.ids)
    for letter in report.redriven:
        print(f"redriven {letter.id} from {letter.queue} to {letter.exchange} {letter.routing_key}")
    for letter in report.kept:
        print(f"kept {letter.id} in {letter.queue}: its routing key is unknown", file=sys.stderr)
    if report.missing:
        raise ValueError(f"no dead-lettered message with id {', '.join(report.missing)}")


async def _broker_setup(args: argparse.Namespace) -> None:
    sys.path.insert(0, ".")
    workflows = [w.name for w in find_workflows(args.modules)] if args.modules else []
    topology = Topology(config.namespace(args.namespace))
    async with _operator_connection(args) as connection:
        queues = await admin.declare_topology(await connection.channel(), topology, workflows)
    print(f"declared the exchanges of {topology.namespace}, the delay cascade and the queues:")
    for queue in queues:
        print(f"  {queue} (dead letters: {queue}.dead)")


async def _demo(args: argparse.Namespace) -> None:
    from processor.demo import run_demo

    console = make_console()
    # A spinner on a terminal while the demo's retry, sleep and event wait go by.
    with console.status("running the demo instance"):
        status = await run_demo(**_settings(args), out=console.print)
    console.print(status_view(status, status.updated_at))


async def _api(args: argparse.Namespace) -> None:
    try:
        from processor.api.auth import ApiConfig, load_config
        from processor.api.server import serve
    except ImportError as error:
        raise SystemExit(
            f"warren api needs the api extra: pip install 'warren[api]' ({error})"
        ) from None
    if args.no_auth:
        config = ApiConfig(auth=False)
    elif args.config is not None:
        config = load_config(args.config)
    else:
        config = ApiConfig()  # no tokens: serve() refuses it, saying what to pass
    await serve(config, args.host, args.port, **_settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warren", description="Durable workflows on RabbitMQ.")
    parser.add_argument("--broker-url", help="default: $WARREN_BROKER_URL or localhost")
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL; default: $WARREN_DATABASE_URL or ./warren.db"
    )
    parser.add_argument("--namespace", help="queue prefix; default: $WARREN_NAMESPACE or warren")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run workflows from the given modules")
    worker.add_argument("modules", nargs="+", help="importable modules with Workflow classes")
    worker.add_argument("--concurrency", type=int, default=100)
    worker.add_argument(
        "--http-port",
        default=None,
        help="/healthz, /readyz and /metrics; default: $WARREN_HTTP_PORT or 9464 (off: none)",
    )
    worker.set_defaults(run=_worker)

    create = commands.add_parser("create", help="create an instance; prints its id")
    create.add_argument("workflow")
    create.add_argument("--params", type=_json_arg, default=None, help="a JSON object")
    create.add_argument("--id", default=None)
    create.add_argument(
        "--count", type=int, default=1, help="create N instances (batches of 100, with progress)"
    )
    create.set_defaults(run=_create)

    status = commands.add_parser("status", help="an instance's status and step timeline")
    status.add_argument("id")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--watch", action="store_true", help="refresh the timeline until the instance ends"
    )
    status.set_defaults(run=_status)

    listing = commands.add_parser("list", help="the newest instances")
    listing.add_argument("--status", choices=[s.value for s in InstanceStatusName])
    listing.add_argument("--workflow")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    usage = commands.add_parser(
        "usage", help="compute and wall time per workflow (instances created since --since)"
    )
    usage.add_argument("--workflow")
    usage.add_argument("--since", help="a duration back from now ('7 days') or an ISO time")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(run=_usage)

    event = commands.add_parser("send-event", help="send an event to an instance")
    event.add_argument("id")
    event.add_argument("type")
    event.add_argument("--payload", type=_json_arg, default=None, help="JSON")
    event.set_defaults(run=_send_event)

    for action in ControlAction:
        control = commands.add_parser(action.value, help=f"{action.value} an instance")
        control.add_argument("id")
        control.set_defaults(run=_control(action))

    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply every pending migration")
    upgrade.set_defaults(run=_db_upgrade)

    dlq = commands.add_parser("dlq", help="dead-lettered messages: list and redrive them")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser(
        "list", help="each dead letter: queue, id, time, reason, body (the queues are unchanged)"
    )
    dlq_redrive = dlq_commands.add_parser(
        "redrive", help="republish dead letters where they were going, then remove them"
    )
    dlq_redrive.add_argument("ids", nargs="*", metavar="ID", help="message ids, as listed")
    dlq_redrive.add_argument("--all", action="store_true", help="every dead letter")
    for subcommand in (dlq_list, dlq_redrive):
        subcommand.add_argument(
            "--queue", help="one dead queue, as listed; default: every one of the namespace"
        )
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(run=_dlq_list)
    dlq_redrive.set_defaults(run=_dlq_redrive)

    broker = commands.add_parser("broker", help="broker administration")
    broker_commands = broker.add_subparsers(dest="broker_command", required=True)
    setup = broker_commands.add_parser(
        "setup", help="declare the exchanges and queues, with administrator credentials"
    )
    setup.add_argument("modules", nargs="*", help="modules whose workflows get run and wake queues")
    # SUPPRESS: without a value here, the global --namespace stays in effect.
    setup.add_argument("--namespace", default=argparse.SUPPRESS, help="as the global option")
    setup.set_defaults(run=_broker_setup)

    api = commands.add_parser("api", help="serve the HTTP API and the dashboard at /ui")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("WARREN_API_CONFIG"),
        help="TOML file of tokens and webhook sources; default: $WARREN_API_CONFIG",
    )
    api.add_argument(
        "--no-auth", action="store_true", help="no authentication (loopback addresses only)"
    )
    api.set_defaults(run=_api)

    demo = commands.add_parser("demo", help="run the bundled example workflow end to end")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(logging.INFO if args.verbose else logging.WARNING)
        tracer_provider = setup_tracing()  # off unless the OTEL_* variables ask for it
    except ValueError as error:
        print(f"warren: {error}", file=sys.stderr)
        return 2
    try:
        run_event_loop(args.run(args))
    except (ProcessorError, ValueError) as error:
        print(f"warren: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the last batch of spans
    return 0
