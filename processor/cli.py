"""The `warren` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from processor import config
from processor.client import Client
from processor.errors import ProcessorError
from processor.store.database import Database
from processor.worker import Worker
from processor.workflow import Workflow
from schemas import ControlAction, InstanceStatus, InstanceStatusName


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


def _when(moment: datetime | None, origin: datetime) -> str:
    if moment is None:
        return "-"
    return f"+{(moment - origin).total_seconds():.3f}s"


def format_status(status: InstanceStatus) -> str:
    """The instance and its step timeline as a plain-text table."""
    lines = [
        f"instance {status.id}  workflow {status.workflow}  status {status.status.value}",
        f"created {status.created_at.isoformat()}  updated {status.updated_at.isoformat()}",
    ]
    header = ("step", "kind", "status", "attempts", "start", "end", "detail")
    rows = [header]
    for step in status.steps:
        if step.error is not None:
            detail = f"{step.error.name}: {step.error.message}"
        elif step.kind == "sleep" and step.wake_at:
            detail = f"wakes {_when(step.wake_at, status.created_at)}"
        elif step.kind == "wait_for_event":
            detail = f"event {step.event_type!r}"
            if step.wake_at:
                detail += f", times out {_when(step.wake_at, status.created_at)}"
        else:
            detail = json.dumps(step.output)[:60] if step.output is not None else ""
        rows.append(
            (
                step.name,
                step.kind.value,
                step.status.value,
                str(step.attempts),
                _when(step.started_at, status.created_at),
                _when(step.ended_at, status.created_at),
                detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if status.output is not None:
        lines.append(f"output: {json.dumps(status.output)}")
    if status.error is not None:
        lines.append(f"error: {status.error.name}: {status.error.message}")
    return "\n".join(lines)


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
    print(f"warren worker: serving {names}", file=sys.stderr)
    await Worker(workflows, concurrency=args.concurrency, **_settings(args)).run()


async def _create(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        instance = await client.create(args.workflow, args.params, id=args.id)
        print(instance.id)


async def _status(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        status = await client.status(args.id)
        print(status.model_dump_json(indent=2) if args.json else format_status(status))


async def _list(args: argparse.Namespace) -> None:
    async with Client(**_settings(args)) as client:
        for item in await client.list(workflow=args.workflow, status=args.status, limit=args.limit):
            print(f"{item.id}\t{item.workflow}\t{item.status.value}\t{item.created_at.isoformat()}")


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
        await database.upgrade()
    finally:
        await database.close()
    print(f"database at {url} is up to date")


async def _demo(args: argparse.Namespace) -> None:
    from processor.demo import run_demo

    status = await run_demo(**_settings(args))
    print(format_status(status))


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
    worker.set_defaults(run=_worker)

    create = commands.add_parser("create", help="create an instance; prints its id")
    create.add_argument("workflow")
    create.add_argument("--params", type=_json_arg, default=None, help="a JSON object")
    create.add_argument("--id", default=None)
    create.set_defaults(run=_create)

    status = commands.add_parser("status", help="an instance's status and step timeline")
    status.add_argument("id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)

    listing = commands.add_parser("list", help="the newest instances")
    listing.add_argument("--status", choices=[s.value for s in InstanceStatusName])
    listing.add_argument("--workflow")
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run=_list)

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

    demo = commands.add_parser("demo", help="run the bundled example workflow end to end")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(args.run(args))
    except (ProcessorError, ValueError) as error:
        print(f"warren: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
