"""A trigger whose constructor keywords are its whole state, declared once as dataclass fields.

The triggerer rebuilds a trigger from ``serialize()`` (after a restart too): the class path and
the keywords to call it with. Declaring the state as fields gives ``__init__`` and
``serialize`` from one list, so a field cannot be stored and then forgotten on a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from airflow.triggers.base import BaseTrigger


@dataclass(kw_only=True, eq=False, repr=False)
class FieldsTrigger(BaseTrigger):
    """Subclass with ``@dataclass(kw_only=True, eq=False, repr=False)`` and plain fields."""

    def __post_init__(self) -> None:
        super().__init__()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        cls = type(self)
        if "__dataclass_fields__" not in cls.__dict__:  # its own fields would be left out
            raise TypeError(f"{cls.__qualname__} must be decorated with @dataclass")
        return f"{cls.__module__}.{cls.__qualname__}", {
            field.name: getattr(self, field.name) for field in fields(self)
        }
