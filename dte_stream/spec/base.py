"""Building blocks shared by every spec model: the base class and common field types.

Connector settings (``dte_stream/spec/kafka.py``, ``mqtt.py``, ``influxdb.py``) build on these;
``model.py`` assembles them into the whole :class:`~dte_stream.spec.model.DataflowSpec`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from dte_stream.times import NS_PER_S, parse_duration_ns, parse_time

__all__ = [
    "CODEC_CHOICES",
    "Identifier",
    "PositiveSeconds",
    "Seconds",
    "SpecModel",
    "TimeNs",
]

CODEC_CHOICES = ("json", "senml", "line_protocol", "csv")
_IDENT = r"^[a-z][a-z0-9_]{0,62}$"


def _to_seconds(value: object) -> object:
    """Accept a duration as seconds (number) or text such as "250ms", "10s", "5m", "2h"."""
    if isinstance(value, str):
        try:
            return parse_duration_ns(value) / NS_PER_S
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


def _to_time_ns(value: object) -> object:
    if isinstance(value, str):
        return parse_time(value)
    return value


Seconds = Annotated[float, BeforeValidator(_to_seconds), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(_to_seconds), Field(gt=0)]
Identifier = Annotated[str, Field(pattern=_IDENT, description="lower_snake_case name")]
TimeNs = Annotated[int, BeforeValidator(_to_time_ns)]


class SpecModel(BaseModel):
    """Base of every spec model: frozen, unknown fields refused with the allowed names."""

    # hide_input_in_errors: pydantic takes it from the outermost model, and an error must
    # never echo a password or token back (our own messages name fields, not values).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            for _name, field in cls.model_fields.items():
                if field.alias:
                    allowed.add(field.alias)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                names = ", ".join(repr(k) for k in unknown)
                raise ValueError(f"unknown field {names}; allowed: {', '.join(sorted(allowed))}")
        return data
