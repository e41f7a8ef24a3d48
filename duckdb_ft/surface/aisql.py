"""The scalar AISQL functions on COMPLETE's generation, their answers held to Snowflake's shapes by constrained
decoding (``response_format``):

- ``ai_classify(input, categories [, config])`` -> ``{"labels": [...]}``, labels only from ``categories``
  (strings, or ``{label, description}``; ``config``: ``output_mode`` ``'single'`` (default) or ``'multi'``,
  ``task_description``, and duckdb-ft's ``model``);
- ``ai_filter(predicate [, input] [, model => ...])`` -> a BOOLEAN from an answer constrained to yes or no;
- ``ai_extract(text, responseFormat [, model => ...])`` -> ``{"response": {...}, "error": null}``, the response
  an object of the fields asked for (questions ``{field: question}``, ``[question, ...]``, ``[[field, question],
  ...]``, or a JSON Schema ``{'schema': {...}}``), valid against their schema;
- ``ai_sentiment(text [, categories] [, model => ...])`` -> ``{"categories": [{"name": "overall", "sentiment":
  ...}, ...]}``, each sentiment one of Snowflake's labels.

Without ``model``, a call runs on the database's default model (:mod:`.default_model`). Usage counts each under
its own name. The table of these functions and the aggregates is :mod:`.aisql_functions`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InvalidArgument
from ..ml.schema import check_schema
from . import usage
from .default_model import default_model

if TYPE_CHECKING:
    from .engine import Engine, Session

CLASSIFY_OPTIONS = {"output_mode", "task_description", "model"}
_YES_NO = {"type": "json", "schema": {"enum": ["yes", "no"]}}
#: Snowflake's AI_SENTIMENT labels: the overall sentiment is one of the first four, a category's any of the five.
SENTIMENTS = ["positive", "negative", "neutral", "mixed", "unknown"]
MAX_SENTIMENT_CATEGORIES = 10


def generate(engine: Engine, session: Session, function: str, models: Sequence[str | None],
             prompts: Sequence[str | None], options: Sequence[str | None]) -> list[str | None]:
    """Each prompt's answer text (None where the prompt is None), counted in the usage history as ``function``;
    a missing model is the database's default."""
    default = default_model(engine)
    names = [m or default for m in models]
    raw = usage.complete_and_record(engine, session, names, prompts, list(options), try_mode=False,
                                    function=function)
    return [None if r is None else json.loads(r)["choices"][0]["messages"] for r in raw]


def user(text: str) -> str:
    """A prompt as COMPLETE's encoded messages (a user turn, whatever the text starts with)."""
    return json.dumps([{"role": "user", "content": text}])


def constrained(schema: dict, max_tokens: int) -> str:
    """COMPLETE's options JSON: ``max_tokens`` and an answer valid against ``schema``."""
    return json.dumps({"max_tokens": max_tokens, "response_format": {"type": "json", "schema": schema}})


def decoded(text: str | None) -> Any:
    """A ``to_json``-encoded argument: a STRUCT, MAP or LIST as its JSON; a string holding JSON text as its value."""
    value = json.loads(text) if text is not None else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


# ------------------------------------------------------------------------------------------------------- filter


def ai_filter(engine: Engine, session: Session, predicates: Sequence[str | None], inputs: Sequence[str | None],
              models: Sequence[str | None]) -> list[str | None]:
    """'true' / 'false' per row (NULL where the predicate is NULL)."""
    prompts = [None if p is None else user(f"{p}\n\n{i}\n\nAnswer yes or no." if i is not None
                                           else f"{p}\n\nAnswer yes or no.") for p, i in zip(predicates, inputs)]
    options = json.dumps({"max_tokens": 16, "response_format": _YES_NO})
    answers = generate(engine, session, "AI_FILTER", models, prompts, [options] * len(prompts))
    return [None if a is None else str(json.loads(a) == "yes").lower() for a in answers]


# ----------------------------------------------------------------------------------------------------- classify


def ai_classify(engine: Engine, session: Session, inputs: Sequence[str | None], categories: Sequence[str | None],
                configs: Sequence[str | None]) -> list[str | None]:
    """``{"labels": [...]}`` as JSON text per row (NULL where the input or the categories are NULL)."""
    prompts, options, names = [], [], []
    for text, cats, conf in zip(inputs, categories, configs):
        config = _config(conf)
        names.append(config.get("model"))
        if text is None or cats is None:
            prompts.append(None)
            options.append(None)
            continue
        prompt, schema, max_tokens = _classification(text, cats, config)
        prompts.append(user(prompt))
        options.append(constrained(schema, max_tokens))
    answers = generate(engine, session, "AI_CLASSIFY", names, prompts, options)
    return [None if a is None else json.dumps(json.loads(a)) for a in answers]


def ai_classify_prompt(engine: Engine, session: Session, inputs: Sequence[str | None],
                       categories: Sequence[str | None], configs: Sequence[str | None]) -> list[str | None]:
    """The prompt AI_CLASSIFY gives the model for each row: what a classifier is fine-tuned on (no generation)."""
    return [None if text is None or cats is None else _classification(text, cats, _config(conf))[0]
            for text, cats, conf in zip(inputs, categories, configs)]


def _classification(text: str, categories: str, config: dict) -> tuple[str, dict, int]:
    """AI_CLASSIFY's prompt for one row, the schema of its answer and its max_tokens."""
    labels, lines = _categories(json.loads(categories))
    multi = config.get("output_mode", "single") == "multi"
    task = config.get("task_description")
    prompt = ((f"{task}\n" if task else "") + "Classify the text into " + ("any of" if multi else "one of")
              + " these categories:\n" + "\n".join(lines) + f"\n\nText: {text}")
    items = {"type": "array", "items": {"enum": labels}, "minItems": 0 if multi else 1,
             "maxItems": len(labels) if multi else 1}
    schema = {"type": "object", "properties": {"labels": items}, "required": ["labels"]}
    return prompt, schema, 32 + 12 * (len(labels) if multi else 1)


def _config(text: str | None) -> dict:
    value = decoded(text)
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - CLASSIFY_OPTIONS:
        raise InvalidArgument(f"AI_CLASSIFY config takes {', '.join(sorted(CLASSIFY_OPTIONS))}, got "
                              f"{json.dumps(value)[:80]}")
    if value.get("output_mode", "single") not in ("single", "multi"):
        raise InvalidArgument("AI_CLASSIFY output_mode must be 'single' or 'multi'")
    return value


def _categories(value: Any) -> tuple[list[str], list[str]]:
    """The labels and the prompt's lines for them, from strings or ``{label, description}`` objects."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not value:
        raise InvalidArgument("AI_CLASSIFY categories must be a non-empty list of labels or {label, description}")
    labels, lines = [], []
    for c in value:
        label, description = (c, None) if isinstance(c, str) else (
            (c.get("label"), c.get("description")) if isinstance(c, dict) else (None, None))
        if not isinstance(label, str) or not label:
            raise InvalidArgument(f"AI_CLASSIFY category {json.dumps(c)[:60]} is not a label or {{label, description}}")
        labels.append(label)
        lines.append(f"- {label}" + (f": {description}" if description else ""))
    if len(set(labels)) != len(labels):
        raise InvalidArgument("AI_CLASSIFY categories repeat a label")
    return labels, lines


# ------------------------------------------------------------------------------------------------------ extract

_EXTRACT_FORMS = ("{'field': 'question', ...}, ['question', ...], [['field', 'question'], ...] or "
                  "{'schema': {'type': 'object', 'properties': {...}}}")


def ai_extract(engine: Engine, session: Session, texts: Sequence[str | None], formats: Sequence[str | None],
               models: Sequence[str | None]) -> list[str | None]:
    """``{"response": {...}, "error": null}`` as JSON text per row (NULL where the text or the format is NULL)."""
    prompts, options = [], []
    for text, fmt in zip(texts, formats):
        if text is None or fmt is None:
            prompts.append(None)
            options.append(None)
            continue
        schema, lines = extraction_schema(decoded(fmt))
        prompts.append(user("Extract from the text the following, as a JSON object:\n" + "\n".join(lines)
                            + f"\n\nText: {text}"))
        options.append(constrained(schema, min(1024, 16 + 48 * _leaves(schema))))
    answers = generate(engine, session, "AI_EXTRACT", models, prompts, options)
    return [None if a is None else json.dumps({"response": json.loads(a), "error": None}) for a in answers]


def extraction_schema(value: Any) -> tuple[dict, list[str]]:
    """The JSON Schema of AI_EXTRACT's ``responseFormat`` and the prompt's lines that ask for each field."""
    if isinstance(value, dict) and "schema" in value:
        if set(value) - {"schema", "type"} or value.get("type", "json") != "json":
            raise InvalidArgument(f"AI_EXTRACT responseFormat must be one of {_EXTRACT_FORMS}")
        schema = value["schema"]
        check_schema(schema)
        if not isinstance(schema, dict) or schema.get("type") != "object" or not schema.get("properties"):
            raise InvalidArgument("AI_EXTRACT's schema must be an object with properties: {'schema': {'type': "
                                  "'object', 'properties': {'name': {'type': 'string'}}}}")
        lines = [f"- {k}" + (f": {p['description']}" if isinstance(p, dict) and p.get("description") else "")
                 for k, p in schema["properties"].items()]
        return {**schema, "required": schema.get("required", list(schema["properties"]))}, lines
    if isinstance(value, list) and all(isinstance(q, str) for q in value):
        pairs = [(q, q) for q in value]
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                         for p in value):
        pairs = [(p[0], p[1]) for p in value]
    elif isinstance(value, dict) and all(isinstance(q, str) for q in value.values()):
        pairs = list(value.items())
    else:
        raise InvalidArgument(f"AI_EXTRACT responseFormat must be one of {_EXTRACT_FORMS}, got "
                              f"{json.dumps(value)[:80]}")
    if not pairs or any(not k.strip() for k, _ in pairs) or len({k for k, _ in pairs}) != len(pairs):
        raise InvalidArgument("AI_EXTRACT responseFormat needs at least one field, each named once")
    schema = {"type": "object", "properties": {k: {"type": "string", "maxLength": 200} for k, _ in pairs},
              "required": [k for k, _ in pairs]}
    return schema, [f"- {k}: {q}" if k != q else f"- {q}" for k, q in pairs]


def _leaves(schema: Any) -> int:
    """How many values an answer to ``schema`` holds at least (an array's items counted once)."""
    if not isinstance(schema, dict):
        return 1
    if schema.get("properties"):
        return sum(_leaves(p) for p in schema["properties"].values())
    if "items" in schema:
        return _leaves(schema["items"])
    return 1


# ---------------------------------------------------------------------------------------------------- sentiment


def ai_sentiment(engine: Engine, session: Session, texts: Sequence[str | None], categories: Sequence[str | None],
                 models: Sequence[str | None]) -> list[str | None]:
    """``{"categories": [{"name": "overall", "sentiment": ...}, ...]}`` as JSON text per row."""
    prompts, options, names_per_row = [], [], []
    for text, cats in zip(texts, categories):
        names = ["overall", *_sentiment_categories(decoded(cats))]
        names_per_row.append(names)
        if text is None:
            prompts.append(None)
            options.append(None)
            continue
        props = {"overall": {"enum": SENTIMENTS[:4]}, **{c: {"enum": SENTIMENTS} for c in names[1:]}}
        schema = {"type": "object", "properties": props, "required": names}
        aspects = f" and towards each of: {', '.join(names[1:])} (unknown where the text does not say)" \
            if len(names) > 1 else ""
        prompts.append(user(f"What is the sentiment of the text overall{aspects}? Answer positive, negative, "
                            f"neutral or mixed.\n\nText: {text}"))
        options.append(constrained(schema, 16 + 12 * len(names)))
    answers = generate(engine, session, "AI_SENTIMENT", models, prompts, options)
    return [None if a is None else json.dumps({"categories": [{"name": n, "sentiment": json.loads(a)[n]}
                                                              for n in names]})
            for a, names in zip(answers, names_per_row)]


def _sentiment_categories(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value) \
            or len(value) > MAX_SENTIMENT_CATEGORIES or len(set(value)) != len(value) or "overall" in value:
        raise InvalidArgument(f"AI_SENTIMENT categories must be a list of up to {MAX_SENTIMENT_CATEGORIES} "
                              f"distinct names other than 'overall', such as ['cost', 'quality'], got "
                              f"{json.dumps(value)[:80]}")
    return value
