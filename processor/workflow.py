"""The Workflow base class, WorkflowEvent, and the registry of workflow classes."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from processor.engine.results import to_json_data
from processor.errors import RegistrationError
from schemas import ID_PATTERN

if TYPE_CHECKING:
    from processor.step import WorkflowStep

P = TypeVar("P")

_NAME = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class WorkflowEvent(Generic[P]):
    """What `run` is called with: the validated params and who this instance is."""

    payload: P
    instance_id: str
    workflow: str
    #: When the instance was created (aware UTC); the same on every replay.
    timestamp: datetime


class Workflow(Generic[P]):
    """Subclass it and write `async def run(self, event, step)`.

    `Workflow[Order]` validates params into the pydantic model `Order`; a bare `Workflow`
    hands `event.payload` over as a dict. `name` defaults to the class name.

    `run` is re-executed from the top on every replay, so code outside steps must be
    deterministic; it may await only step calls (and `asyncio.gather` of them).
    """

    name: ClassVar[str]
    #: Filled in from the type argument by __init_subclass__.
    params_type: ClassVar[Any] = dict

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Workflow:
                (arg,) = get_args(base)
                cls.params_type = dict if isinstance(arg, TypeVar) else arg

    async def run(self, event: WorkflowEvent[P], step: WorkflowStep) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define async def run(event, step)")

    @classmethod
    def parse_params(cls, params: Any) -> P:
        """Validate stored params into what `event.payload` should be."""
        value = {} if params is None else params
        result: P = _adapter(cls.params_type).validate_python(value)
        return result

    @classmethod
    def dump_params(cls, params: Any) -> dict[str, Any] | None:
        """Params as the JSON object stored and sent; validated first when the class is known.

        Raises:
            TypeError: params that are not a dict or a pydantic model.
            ValueError: params that are not JSON or are over 1 MiB as JSON.
            pydantic.ValidationError: params the workflow's params model rejects.
        """
        if params is None:
            if cls is not Workflow:
                cls.parse_params(None)  # as the run will: None is validated as {}
            return None
        if isinstance(params, BaseModel):
            params = params.model_dump(mode="json", by_alias=True, round_trip=True)
        if not isinstance(params, dict):
            raise TypeError(
                f"params must be a JSON object (dict or pydantic model), not "
                f"{type(params).__name__}"
            )
        if cls is not Workflow:
            # By alias and without computed fields: as `parse_params` reads them back.
            params = _adapter(cls.params_type).dump_python(
                cls.parse_params(params), mode="json", by_alias=True, round_trip=True
            )
        try:
            # As `parse_params` reads them back: nested models too (a by-name create).
            data: dict[str, Any] = to_json_data(params, round_trip=True)
        except ValueError as error:
            raise ValueError(f"params {error}") from None
        return data


@functools.cache
def _adapter(params_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(params_type)


def check_workflow_class(cls: type[Workflow[Any]]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Workflow)) or cls is Workflow:
        raise RegistrationError(f"{cls!r} is not a subclass of Workflow")
    if not _NAME.fullmatch(cls.name):
        raise RegistrationError(
            f"workflow name {cls.name!r} of {cls.__qualname__} must match {ID_PATTERN}"
        )
    if cls.run is Workflow.run or not inspect.iscoroutinefunction(cls.run):
        raise RegistrationError(
            f"{cls.__qualname__}.run must be an `async def run(self, event, step)`"
        )
    if len(inspect.signature(cls.run).parameters) != 3:
        raise RegistrationError(f"{cls.__qualname__}.run must take (self, event, step)")


def build_registry(classes: Iterable[type[Workflow[Any]]]) -> dict[str, type[Workflow[Any]]]:
    """Map names to classes: one class registered twice is fine, two classes under one name
    are not."""
    registry: dict[str, type[Workflow[Any]]] = {}
    for cls in classes:
        check_workflow_class(cls)
        known = registry.get(cls.name)
        if known is not None and known is not cls:
            raise RegistrationError(
                f"workflow name {cls.name!r} is used by both {known.__qualname__} and "
                f"{cls.__qualname__}"
            )
        registry[cls.name] = cls
    if not registry:
        raise RegistrationError("a worker needs at least one workflow")
    return registry


def workflow_name(workflow: type[Workflow[Any]] | str) -> str:
    """The name of a workflow given as a class or a name; raises ValueError for a bad name."""
    if isinstance(workflow, str):
        name = workflow
    elif isinstance(workflow, type) and issubclass(workflow, Workflow) and workflow is not Workflow:
        name = workflow.name
    else:
        raise TypeError(f"workflow must be a Workflow subclass or its name, got {workflow!r:.60}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"workflow name {name!r} must match {ID_PATTERN}")
    return name
