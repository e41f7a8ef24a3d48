"""DuckDB's result types as PostgreSQL types, for the wire: each column's type OID and its values in PostgreSQL's
text format; and the parameters a client binds, read back into Python values.

The OIDs are PostgreSQL's own (``pg_type``), so a client decodes them as it would a PostgreSQL server's:

- BOOLEAN ``bool`` 16; TINYINT/SMALLINT/UTINYINT ``int2`` 21; INTEGER/USMALLINT ``int4`` 23; BIGINT/UINTEGER
  ``int8`` 20; HUGEINT, UBIGINT, UHUGEINT and DECIMAL ``numeric`` 1700; FLOAT ``float4`` 700; DOUBLE ``float8`` 701;
- VARCHAR, ENUM, BIT ``text`` 25; JSON ``json`` 114; UUID ``uuid`` 2950; BLOB ``bytea`` 17 (hex);
- DATE 1082, TIME 1083, TIMESTAMP 1114, TIMESTAMP WITH TIME ZONE 1184, INTERVAL 1186;
- a list or fixed-size array of one of the scalar types above: that type's PostgreSQL array (``int4[]`` 1007, ...);
- a STRUCT, a MAP, a list of those or of lists: ``json`` 114 (a map as an object).

Parameters (Bind) are read by psycopg's loaders from the type OID the client sent, in text or binary format; a
parameter of unknown type (OID 0, what clients send for a string) is passed as its text.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import duckdb
from psycopg import adapters, pq
from psycopg.adapt import Transformer

Encoder = Callable[[Any], bytes]


@dataclass(frozen=True)
class PgType:
    """A column as the wire describes it: PostgreSQL's type OID, its size (-1: variable) and its text encoder."""

    oid: int
    size: int
    encode: Encoder
    as_text: bool = False  # sent as DuckDB writes the value (a type PostgreSQL has no match for)


def _text(v: Any) -> bytes:
    return str(v).encode()


def _bool(v: Any) -> bytes:
    return b"t" if v else b"f"


def _float(v: float) -> bytes:
    if v != v:
        return b"NaN"
    if v in (float("inf"), float("-inf")):
        return b"Infinity" if v > 0 else b"-Infinity"
    return repr(float(v)).encode()


def _numeric(v: Any) -> bytes:
    return (format(v, "f") if isinstance(v, decimal.Decimal) else str(v)).encode()


def _timestamp(v: datetime.datetime) -> bytes:
    return v.isoformat(sep=" ").encode()


def _iso(v: Any) -> bytes:
    return v.isoformat().encode()


def _interval(v: Any) -> bytes:
    """An Arrow month-day-nano interval (or a timedelta) in PostgreSQL's own interval style."""
    if isinstance(v, datetime.timedelta):
        months, days, micros = 0, v.days, v.seconds * 1_000_000 + v.microseconds
    else:
        months, days, micros = v.months, v.days, v.nanoseconds // 1000
    sign = "-" if micros < 0 else ""
    seconds, us = divmod(abs(micros), 1_000_000)
    clock = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" + (f".{us:06d}" if us else "")
    return f"{months} mons {days} days {clock}".encode()


def _bytea(v: bytes) -> bytes:
    return b"\\x" + bytes(v).hex().encode()


def _plain(v: Any) -> Any:
    """A nested value as JSON can hold it: a map (DuckDB gives its pairs) as an object, other values as text."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        if v and all(isinstance(p, tuple) and len(p) == 2 for p in v):
            return {str(k): _plain(x) for k, x in v}
        return [_plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (bytes, bytearray)):
        return _bytea(v).decode()
    return str(v)


def _json(v: Any) -> bytes:
    return (v if isinstance(v, str) else json.dumps(_plain(v), ensure_ascii=False)).encode()


def _array_item(v: Any, encode: Encoder) -> str:
    if v is None:
        return "NULL"
    text = encode(v).decode()
    if text == "" or text.upper() == "NULL" or any(c in text for c in ',{}"\\ \t\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _array(encode: Encoder) -> Encoder:
    return lambda v: ("{" + ",".join(_array_item(x, encode) for x in v) + "}").encode()


#: DuckDB's scalar type ids: (OID, size, encoder, the OID of an array of them).
SCALARS: dict[str, tuple[int, int, Encoder, int]] = {
    "boolean": (16, 1, _bool, 1000),
    "tinyint": (21, 2, _text, 1005), "smallint": (21, 2, _text, 1005), "utinyint": (21, 2, _text, 1005),
    "integer": (23, 4, _text, 1007), "usmallint": (23, 4, _text, 1007),
    "bigint": (20, 8, _text, 1016), "uinteger": (20, 8, _text, 1016),
    "hugeint": (1700, -1, _numeric, 1231), "ubigint": (1700, -1, _numeric, 1231),
    "uhugeint": (1700, -1, _numeric, 1231), "decimal": (1700, -1, _numeric, 1231),
    "float": (700, 4, _float, 1021), "double": (701, 8, _float, 1022),
    "varchar": (25, -1, _text, 1009), "enum": (25, -1, _text, 1009), "bit": (25, -1, _text, 1009),
    "uuid": (2950, 16, _text, 2951), "blob": (17, -1, _bytea, 1001),
    "date": (1082, 4, _iso, 1182), "time": (1083, 8, _iso, 1183),
    "timestamp": (1114, 8, _timestamp, 1115), "timestamp_s": (1114, 8, _timestamp, 1115),
    "timestamp_ms": (1114, 8, _timestamp, 1115), "timestamp_ns": (1114, 8, _timestamp, 1115),
    "timestamp with time zone": (1184, 8, _timestamp, 1185),
    "time with time zone": (1266, 12, _iso, 1270),
    "interval": (1186, 16, _interval, 1187),
}
JSON = PgType(114, -1, _json)
TEXT = PgType(25, -1, _text)


def pg_type(t: Any) -> PgType:
    """The PostgreSQL type of a DuckDB column type (a ``duckdb.DuckDBPyType`` or its name)."""
    t = duckdb.sqltype(t) if isinstance(t, str) else t
    if str(t) == "JSON":
        return JSON
    if t.id in ("list", "array"):
        child = dict(t.children)["child"]
        if str(child) != "JSON" and child.id in SCALARS:
            _, _, encode, array_oid = SCALARS[child.id]
            return PgType(array_oid, -1, _array(encode))
        return JSON
    if t.id in ("struct", "map", "union"):
        return JSON
    if t.id in SCALARS:
        oid, size, encode, _ = SCALARS[t.id]
        return PgType(oid, size, encode)
    return PgType(25, -1, _text, as_text=True)  # a type PostgreSQL has no match for (VARINT, ...): its text


def encode_row(row: tuple, types: list[PgType]) -> list[bytes | None]:
    """One row's values in text format (None for NULL)."""
    return [None if v is None else t.encode(v) for v, t in zip(row, types)]


# ---------------------------------------------------------------------------------------------------- parameters

_TX = Transformer()


def decode_parameter(data: bytes | None, oid: int, binary: bool) -> Any:
    """A bound parameter's value: psycopg's loader for ``oid`` (text or binary); unknown types as text.

    Raises:
        ValueError: the bytes are not a value of that type (or a binary value of a type without a loader).
    """
    if data is None:
        return None
    try:
        loader_cls = adapters.get_loader(oid, pq.Format.BINARY if binary else pq.Format.TEXT)
    except Exception:  # psycopg's registry raises for a malformed OID
        loader_cls = None
    if loader_cls is None or oid == 0:
        if binary:
            raise ValueError(f"a binary parameter of type OID {oid} cannot be read: send it in text format")
        return bytes(data).decode()
    try:
        value = loader_cls(oid, _TX).load(bytes(data))
    except Exception as e:  # psycopg's DataError, a UnicodeDecodeError, a struct.error
        raise ValueError(f"parameter of type OID {oid} is not a valid value: {e}") from None
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
