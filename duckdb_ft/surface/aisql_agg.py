"""AI_AGG and AI_SUMMARIZE_AGG: aggregates over any number of rows, as Cortex describes them. A group's rows (its
``list()``) are packed into chunks that fit the model's context window with the instruction; each chunk is
answered (one model call each, every group's chunks batched together); when a group had more than one chunk, its
partial answers are packed and combined the same way, round after round, until one answer is left.

Model calls for a group: 1 when its rows fit one prompt; else its ``c`` chunks plus the combine calls, each of
which takes as many partial answers as fit (at least 2, as an answer is at most an eighth of the window), so
fewer than ``2c`` calls in all. Every call counts as one row of the usage history under the function's name.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from ..errors import InvalidArgument
from ..ml import packing
from .aisql import generate, user
from .default_model import default_model

if TYPE_CHECKING:
    from ..ml.models import LoadedModel
    from .engine import Engine, Session

SUMMARIZE = "Summarize the following rows in a few sentences."
_MAP = "{instruction}\n\nThe rows:\n{rows}"
_COMBINE = ("{instruction}\n\nThe rows were too many to read at once, so they were read in parts; the answers "
            "for the parts:\n{rows}\n\nCombine these answers into one answer for all the rows.")
#: The longest answer of one call (partial or final): this, or an eighth of the model's window if less.
ANSWER_TOKENS = 512
#: Tokens allowed per item for the newline between items (and a token merged across a boundary).
PER_ITEM = 2


def ai_agg(engine: Engine, session: Session, lists: Sequence[str | None], instructions: Sequence[str | None],
           models: Sequence[str | None]) -> list[str | None]:
    """One answer per group: its rows (``to_json(list(expr))``) reduced under ``instruction``."""
    return aggregate(engine, session, "AI_AGG", lists, instructions, models)


def ai_summarize_agg(engine: Engine, session: Session, lists: Sequence[str | None],
                     models: Sequence[str | None]) -> list[str | None]:
    """One summary per group."""
    return aggregate(engine, session, "AI_SUMMARIZE_AGG", lists, [SUMMARIZE] * len(lists), models)


class _Group:
    """One group's reduction: its model, instruction, the items of the current round and the budgets."""

    def __init__(self, loaded: LoadedModel, name: str, instruction: str, items: list[str], function: str = "AI_AGG"):
        self.loaded, self.name, self.instruction = loaded, name, instruction
        window = loaded.context_length
        self.answer = min(ANSWER_TOKENS, window // 8)
        overhead = max(packing.prompt_tokens(loaded, t.format(instruction=instruction, rows=""))
                       for t in (_MAP, _COMBINE))
        self.budget = window - overhead - self.answer - 8
        if self.budget < 3 * (self.answer + PER_ITEM):
            raise InvalidArgument(f"the instruction of {function} takes {overhead} of the {window} tokens of model "
                                  f"'{name}': too many to leave room for rows; shorten it")
        self.template, self.limit = _MAP, self.budget - PER_ITEM
        self.items = items
        self.result: str | None = None

    def prompts(self) -> list[str]:
        """This round's prompts: the items cut to fit and packed."""
        texts, counts = packing.fitted(self.loaded, self.items, self.limit)
        return [user(self.template.format(instruction=self.instruction, rows="\n".join(texts[i] for i in chunk)))
                for chunk in packing.pack(counts, self.budget, PER_ITEM)]

    def answered(self, answers: list[str]) -> None:
        """The round's answers: the result if one, else the next round's items (partial answers to combine)."""
        if len(answers) == 1:
            self.result = answers[0]
        else:
            self.template, self.limit, self.items = _COMBINE, self.answer, answers


def aggregate(engine: Engine, session: Session, function: str, lists: Sequence[str | None],
              instructions: Sequence[str | None], models: Sequence[str | None]) -> list[str | None]:
    default = default_model(engine)
    groups: list[_Group | None] = []
    for values, instruction, model in zip(lists, instructions, models):
        items = [v if isinstance(v, str) else json.dumps(v) for v in json.loads(values) if v is not None] \
            if values is not None else []
        if not items or instruction is None:
            groups.append(None)
            continue
        name = model or default
        loaded, _ = engine.resolve_model(session, name)  # USAGE checked here too, before any generation
        groups.append(_Group(loaded, name, instruction, items, function))
    active = [g for g in groups if g is not None]
    while active:
        calls = [(g, p) for g in active for p in g.prompts()]
        options = [json.dumps({"max_tokens": g.answer}) for g, _ in calls]
        answers = generate(engine, session, function, [g.name for g, _ in calls], [p for _, p in calls], options)
        for g in active:
            g.answered([a or "" for (h, _), a in zip(calls, answers) if h is g])
        active = [g for g in active if g.result is None]
    return [None if g is None else g.result for g in groups]
