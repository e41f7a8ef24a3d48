"""User metrics: a SQL expression over one evaluated row, evaluated by DuckDB, under the caller's privileges.

``{"name": "short", "sql": "length(prediction) < 200"}`` scores each row with the expression, which may use the
columns ``id, model, prompt, completion, prediction`` (all VARCHAR) and must be BOOLEAN (a 0/1 metric, tested
with McNemar's test) or a number. It is checked before any generation: one expression (no statement around it),
binding on the columns, its type, and SELECT on whatever tables a subquery in it reads (as FINETUNE checks its
queries).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import TYPE_CHECKING, Any, Sequence

from sqlglot import exp

from ..catalog import registered
from ..errors import InvalidArgument
from ..governance.authorize import authorize_query
from ..queries import check_query, parse
from .metrics import BUILTIN, SQL, Metric

if TYPE_CHECKING:
    from ..surface.engine import Session

ROWS = "__ft_eval_rows"
COLUMNS = ("id", "model", "prompt", "completion", "prediction")
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
            "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def parse_spec(spec: Any) -> Metric:
    """A user metric from its JSON object ``{"name": ..., "sql": ...}``; the binding check comes in :func:`check`."""
    if not isinstance(spec, dict) or set(spec) != {"name", "sql"}:
        raise InvalidArgument('a user metric is an object {"name": "short", "sql": "length(prediction) < 200"} '
                              f"with exactly the keys name and sql, got {spec!r}"[:300])
    name, sql = spec["name"], spec["sql"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"user metric name {name!r} must be a lower-case identifier (letters, digits, _)")
    if name in BUILTIN or name in COLUMNS:
        raise InvalidArgument(f"user metric name {name!r} is taken by a built-in metric or column: choose another")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidArgument(f"user metric {name!r}: sql must be a SQL expression, e.g. \"length(prediction) < 200\"")
    sql = sql.strip()
    return Metric(name, lambda s: scores(s.cur, name, sql, {"id": s.ids, "model": [s.model_name] * len(s.ids),
                                                            "prompt": s.prompts, "completion": s.refs,
                                                            "prediction": s.preds}), needs=SQL, sql=sql)


def _select(metric: Metric, source: str = ROWS) -> str:
    return f"SELECT ({metric.sql}) AS value FROM {source}"


def _one_expression(stmt: Any) -> bool:
    """Is ``stmt`` exactly ``SELECT (expr) AS value FROM __ft_eval_rows``, nothing smuggled around the expression?"""
    if not isinstance(stmt, exp.Select) or len(stmt.expressions) != 1:
        return False
    source = stmt.args.get("from_") or stmt.args.get("from")
    extra = [k for k, v in stmt.args.items() if v and k not in ("expressions", "from_", "from")]
    return not extra and source is not None and isinstance(source.this, exp.Table) and source.this.name == ROWS


def check(cur: Any, session: Session, metric: Metric) -> Metric:
    """Bind the expression on the evaluation's columns; returns the metric with ``binary`` set from its type.

    Raises InvalidArgument (not one expression, does not bind, not BOOLEAN or numeric) or PermissionDenied (it
    reads what the session may not, checked as FINETUNE checks its queries).
    """
    what = f"user metric {metric.name!r}"
    try:
        stmt = parse(check_query(_select(metric), what))[0]
    except InvalidArgument as e:
        raise InvalidArgument(f"{e} (its sql must be one expression over {', '.join(COLUMNS)})") from None
    if not _one_expression(stmt):
        raise InvalidArgument(f"{what}: its sql must be one expression over {', '.join(COLUMNS)}, "
                              f"got {metric.sql[:80]!r}")
    empty = "(SELECT " + ", ".join(f"NULL::VARCHAR AS {c}" for c in COLUMNS) + f" LIMIT 0) AS {ROWS}"
    try:
        described = cur.execute(f"DESCRIBE {_select(metric, empty)}").fetchall()
    except Exception as e:  # duckdb.Error: the expression does not bind
        raise InvalidArgument(f"{what} fails: {str(e).splitlines()[0]} (columns: {', '.join(COLUMNS)})") from None
    authorize_query(session, cur, _select(metric, empty), what)
    kind = str(described[0][1]).upper()
    if kind != "BOOLEAN" and not kind.startswith(_NUMERIC):
        raise InvalidArgument(f"{what} must be BOOLEAN or a number, got {kind}: e.g. length(prediction) < 200")
    return dataclasses.replace(metric, binary=kind == "BOOLEAN")


def scores(cur: Any, name: str, sql: str, rows: dict[str, Sequence[Any]]) -> list[float | None]:
    """User metric ``name``'s expression ``sql`` on every row (``rows``: a column name to its values, every column of COLUMNS)."""
    import pyarrow as pa

    n = len(rows["prediction"])
    table = pa.table({"__row": list(range(n)), **{c: pa.array(list(rows[c]), pa.string()) for c in COLUMNS}})
    view = f"{ROWS}_{uuid.uuid4().hex}"
    with registered(cur, view, table):
        try:
            query = f"SELECT ({sql})::DOUBLE FROM {view} AS {ROWS} ORDER BY __row"
            return [r[0] for r in cur.execute(query).fetchall()]
        except Exception as e:  # a runtime error of the user's expression (a cast that fails on one row...)
            raise InvalidArgument(f"user metric {name!r} failed on the predictions: "
                                  f"{str(e).splitlines()[0]}") from None
