"""What every config dataclass shares: checks that name their field, and plain-value I/O."""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class ConfigError(ValueError):
    """A config field with a value its dataclass rejects; ``field`` names it.

    >>> from mrnet_ray.config import TrainConfig
    >>> try:
    ...     TrainConfig(epochs=0)
    ... except ConfigError as e:
    ...     print(e.field, "|", e)
    epochs | epochs=0 must be >= 1
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


def tupleize(value: Any) -> Any:
    """Lists (as YAML and JSON give them) to tuples, recursively, so configs stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(tupleize(v) for v in value)
    return value


class Config:
    """Shared ``from_dict`` / ``to_dict`` / ``replace`` for the frozen config dataclasses."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from plain values; unknown keys raise ``ValueError`` naming them."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                unknown[0],
                f"{unknown[0]}: unknown {cls.__name__} field; "
                f"known fields: {', '.join(sorted(known))}",
            )
        return cls(**{k: tupleize(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **{k: tupleize(v) for k, v in changes.items()})  # type: ignore[type-var]
