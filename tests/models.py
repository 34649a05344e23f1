"""Pydantic models that tests on both sides of the wire share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field


class Quote(BaseModel):
    """Strict, with an alias and a computed field: it reads back only what it dumps to
    validate (`round_trip`), not all it dumps."""

    model_config = ConfigDict(extra="forbid")
    price: int
    quantity: int = Field(alias="qty")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.price * self.quantity
