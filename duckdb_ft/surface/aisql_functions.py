"""The AISQL functions as a table, one entry per function: its SQL name and parameters, how the macro hands them
to its Python function (each as VARCHAR), what the answer is cast to, and the function that computes a chunk of
rows. ``functions.py`` registers one UDF and one macro (also as ``snowflake.cortex.<name>``) per entry; the
allow-list (``governance/calls.py``) and the README's list are checked against this table by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import aisql, aisql_agg


@dataclass(frozen=True)
class AisqlFunction:
    """One AISQL function: ``name`` and ``params`` (the macro's parameters, SQL), ``args`` (the UDF's arguments
    built from them, each a VARCHAR expression), ``returns`` (a cast of the UDF's text: ``::BOOLEAN``, ``::JSON``),
    ``run`` ((engine, session, *columns) -> one text per row), ``aggregate`` (its args aggregate with ``list()``:
    usable with GROUP BY)."""

    name: str
    params: str
    args: tuple[str, ...]
    run: Callable[..., list[str | None]]
    returns: str = ""
    aggregate: bool = False

    def macro(self, prefix: str, session: str) -> str:
        """The CREATE MACRO statement of this function (``prefix``: ``TEMP MACRO `` or ``MACRO snowflake.cortex.``)."""
        return (f"CREATE OR REPLACE {prefix}{self.name}({self.params}) AS "
                f"__ft_{self.name}({', '.join(self.args)}, {session}){self.returns}")


def _agg_list(expr: str) -> str:
    return f"to_json(list({expr}))::VARCHAR"


#: The AISQL functions (AI_COMPLETE, which names its model and takes COMPLETE's options, is ``surface/ai.py``).
#: Adding one is one entry here.
FUNCTIONS: dict[str, AisqlFunction] = {f.name: f for f in [
    AisqlFunction("ai_filter", "predicate, input := NULL, model := NULL",
                  ("predicate::VARCHAR", "input::VARCHAR", "model::VARCHAR"), aisql.ai_filter, "::BOOLEAN"),
    AisqlFunction("ai_classify", "input, categories, config := NULL",
                  ("input::VARCHAR", "to_json(categories)::VARCHAR", "to_json(config)::VARCHAR"),
                  aisql.ai_classify, "::JSON"),
    AisqlFunction("ai_classify_prompt", "input, categories, config := NULL",
                  ("input::VARCHAR", "to_json(categories)::VARCHAR", "to_json(config)::VARCHAR"),
                  aisql.ai_classify_prompt),
    AisqlFunction("ai_extract", "text, responseFormat, model := NULL",
                  ("text::VARCHAR", "to_json(responseFormat)::VARCHAR", "model::VARCHAR"), aisql.ai_extract,
                  "::JSON"),
    AisqlFunction("ai_sentiment", "text, categories := NULL, model := NULL",
                  ("text::VARCHAR", "to_json(categories)::VARCHAR", "model::VARCHAR"), aisql.ai_sentiment,
                  "::JSON"),
    AisqlFunction("ai_agg", "expr, instruction, model := NULL",
                  (_agg_list("expr"), "any_value(instruction)::VARCHAR", "any_value(model)::VARCHAR"),
                  aisql_agg.ai_agg, aggregate=True),
    AisqlFunction("ai_summarize_agg", "expr, model := NULL", (_agg_list("expr"), "any_value(model)::VARCHAR"),
                  aisql_agg.ai_summarize_agg, aggregate=True),
]}
