"""Table names and schemas of the local store, and the normalisation every frame goes through.

Every table has a ``time`` column (``Datetime("ns", "UTC")`` on disk, int64 nanoseconds
accepted on the way in) and a ``twin_id`` column. Tables with a registered schema (the
``readings`` table: :data:`READINGS_SCHEMA`) are written with exactly that schema, so that all
files of a table scan together; frames for other tables only need ``time`` and ``twin_id``.

>>> frame = pl.DataFrame({"time": [1_000], "twin_id": ["pump-1"], "channel": ["temp"],
...                       "value": [20.5]})
>>> out = normalize_frame("readings", frame, READINGS_SCHEMA)
>>> out.columns == list(READINGS_SCHEMA.names()), out["time"].dtype
(True, Datetime(time_unit='ns', time_zone='UTC'))
"""

from __future__ import annotations

import re

import polars as pl

from dte_stream.errors import StoreError

__all__ = [
    "ALERTS_SCHEMA",
    "OUTPUTS_SCHEMA",
    "READINGS_SCHEMA",
    "TABLE_SCHEMAS",
    "TIME_DTYPE",
    "check_table_name",
    "normalize_frame",
]

#: How times are stored: nanoseconds, UTC.
TIME_DTYPE = pl.Datetime("ns", "UTC")

#: The main table: one row per reading with its raw value and the twin's estimate after it.
#: ``estimate``/``std``/``innovation``/``nis`` are null when no twin model processed the reading;
#: ``flags`` holds the bits of :mod:`dte_stream.twins.flags`, ``anomaly_score`` is in [0, 1].
READINGS_SCHEMA = pl.Schema(
    {
        "time": TIME_DTYPE,
        "twin_id": pl.String(),
        "twin_type": pl.String(),
        "channel": pl.String(),
        "value": pl.Float64(),
        "unit": pl.String(),
        "estimate": pl.Float64(),
        "std": pl.Float64(),
        "innovation": pl.Float64(),
        "nis": pl.Float64(),
        "flags": pl.UInt16(),
        "anomaly_score": pl.Float64(),
    }
)

#: The optional outputs of twin models (every state of a multi-state model, forecasts, learner
#: outputs) in long form: one row per reading and output name.
OUTPUTS_SCHEMA = pl.Schema(
    {
        "time": TIME_DTYPE,
        "twin_id": pl.String(),
        "twin_type": pl.String(),
        "channel": pl.String(),
        "output": pl.String(),
        "value": pl.Float64(),
    }
)

#: One row per alert event; ``labels`` is a JSON object (text), ``ends`` null unless resolved.
ALERTS_SCHEMA = pl.Schema(
    {
        "time": TIME_DTYPE,
        "alert_id": pl.String(),
        "twin_id": pl.String(),
        "twin_type": pl.String(),
        "rule": pl.String(),
        "state": pl.String(),
        "severity": pl.String(),
        "channel": pl.String(),
        "message": pl.String(),
        "value": pl.Float64(),
        "starts": TIME_DTYPE,
        "ends": TIME_DTYPE,
        "renotify": pl.Boolean(),
        "acked_by": pl.String(),
        "sequence": pl.Int64(),
        "labels": pl.String(),
    }
)

#: Tables whose schema is fixed; the default of :class:`~dte_stream.store.LocalStore`.
TABLE_SCHEMAS: dict[str, pl.Schema] = {
    "readings": READINGS_SCHEMA,
    "outputs": OUTPUTS_SCHEMA,
    "alerts": ALERTS_SCHEMA,
}

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_table_name(table: str) -> str:
    """Return ``table`` if it is a valid table name, else raise :class:`StoreError`.

    Names become directory names, so they are restricted to lower-case letters, digits and
    ``_`` (starting with a letter, at most 64 characters): no path tricks, no case clashes.
    """
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise StoreError(
            f"invalid table name {table!r}: use lower-case letters, digits and '_', "
            "starting with a letter (e.g. readings, alerts)"
        )
    return table


def _time_column(table: str, dtype: pl.DataType) -> pl.Expr:
    """An expression turning the ``time`` column into ``Datetime("ns", "UTC")``."""
    col = pl.col("time")
    if dtype.is_integer():
        return col.cast(pl.Int64).cast(TIME_DTYPE)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            raise StoreError(
                f"table {table}: column time is a naive datetime; "
                "give int64 nanoseconds or a timezone-aware UTC datetime"
            )
        return col.dt.convert_time_zone("UTC").dt.cast_time_unit("ns")
    raise StoreError(
        f"table {table}: column time has type {dtype}; give int64 nanoseconds (UTC) "
        "or a timezone-aware datetime"
    )


def normalize_frame(table: str, frame: pl.DataFrame, schema: pl.Schema | None) -> pl.DataFrame:
    """Check ``frame`` and bring it to the form stored for ``table``.

    ``time`` becomes ``Datetime("ns", "UTC")``; ``time`` and ``twin_id`` must be present and
    non-null. With a ``schema``, columns are cast to it (losslessly, or :class:`StoreError`),
    put in its order, and the schema's columns missing from ``frame`` are filled with nulls;
    a column the schema does not know is refused, so a misspelt name never goes unnoticed.
    """
    if not isinstance(frame, pl.DataFrame):
        raise StoreError(f"table {table}: expected a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("time", "twin_id") if c not in frame.columns]
    if missing:
        raise StoreError(f"table {table}: frame has no column {', '.join(missing)}")
    exprs: list[pl.Expr] = [_time_column(table, frame.schema["time"]).alias("time")]
    if schema is None:
        exprs.append(pl.col("twin_id").cast(pl.String))
        exprs.extend(pl.col(c) for c in frame.columns if c not in ("time", "twin_id"))
    else:
        extra = [c for c in frame.columns if c not in schema]
        if extra:
            raise StoreError(
                f"table {table}: unknown column(s) {', '.join(extra)}; "
                f"the table has {', '.join(schema.names())}"
            )
        for name, dtype in schema.items():
            if name == "time":
                continue
            if name in frame.columns:
                exprs.append(pl.col(name).cast(dtype, strict=True))
            else:
                exprs.append(pl.lit(None, dtype=dtype).alias(name))
    try:
        out = frame.select(exprs)
    except pl.exceptions.PolarsError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"table {table}: cannot convert frame to the table schema: {reason}") from None
    nulls = [c for c in ("time", "twin_id") if out[c].null_count()]
    if nulls:
        raise StoreError(f"table {table}: column(s) {', '.join(nulls)} hold null values")
    return out
