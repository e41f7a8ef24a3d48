"""The tasks of ``benchmarks/quality.py``: made by code, each with held-out rows that test generalisation the way
users need it, and a checker that cannot be fooled (execution of SQL, or exact match of a short answer).

- ``sql``: the demo's text-to-SQL on a shop (``duckdb_ft/demo/dataset.py``); held out: an unseen phrasing of a
  kind of question, or an unseen value. Checked by execution: the answer's SQL must return the right rows.
- ``library``: text-to-SQL on a lending library, compositional: training shows each part alone (a measure; "per
  genre" or "per author"; a filter such as "published after 2015"), held out combines a grouping with a filter,
  a combination training never shows ("How many books per genre were published after 2015?"). By execution on
  two databases: the answer must return the reference's rows on both (one can hide a dropped filter).
- ``tickets``: support tickets classified into one of six queues (``benchmarks/defaults_study.py``); held out: a
  phrasing of each queue and greetings training never shows. Exact match of the queue name.
- ``extract``: short-answer extraction (the order number, the city or the customer's name from a message); held
  out: message templates training never shows, or cities and names it never shows. Exact match of the value.

Each task is deterministic (its own seed): the same rows for every recipe and every training seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from duckdb_ft.demo import dataset, scoring
from duckdb_ft.evaluation.sqlmatch import Sandbox


@dataclass
class Task:
    name: str
    train: list[tuple[str, str]]
    """(prompt, completion) pairs to train on."""
    test: list[tuple[str, str, str]]
    """(prompt, reference answer, what is unseen in it) held-out rows."""
    max_tokens: int
    check: Callable[[str | None, str], bool]
    """Is the answer right? (prediction, reference)"""
    close: Callable[[], None] = field(default=lambda: None)


def _short(answer: str | None) -> str:
    """A short answer as compared: the first line, stripped of spaces and a final full stop."""
    return (answer or "").strip().split("\n")[0].strip().rstrip(".").strip()


def _cap(rows: list, n: int | None, seed: int) -> list:
    """At most ``n`` of the rows, a fixed sample (in their order); all of them when ``n`` is None."""
    if n is None or n >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in keep]


# ----------------------------------------------------------------------------------------------------- sql


def sql_task() -> Task:
    shop = dataset.make_shop()
    train, test = dataset.make_pairs(shop)
    scorer = scoring.Scorer(shop)
    return Task("sql", [(p.prompt, p.sql) for p in train], [(p.prompt, p.sql, p.unseen) for p in test], 64,
                scorer.match, scorer.close)


# ----------------------------------------------------------------------------------------------------- library

GENRES = ["fantasy", "history", "poetry", "science", "travel", "crime"]
AUTHORS = ["Ada Lind", "Bruno Vale", "Cora Mendes", "Dev Rao", "Elif Sahin", "Felix Ward", "Gina Rossi",
           "Hana Ito"]
LIBRARY_SCHEMA = "books(id, title, author, genre, year, pages)"
MEASURES = [  # (phrasings, SQL expression)
    (["How many books are there{g}{f}?", "Count the books{g}{f}."], "count(*)"),
    (["What is the average number of pages of the books{g}{f}?", "Give the mean page count of the books{g}{f}."],
     "avg(pages)"),
    (["What is the most recent publication year of the books{g}{f}?", "Find the newest year among the books{g}{f}."],
     "max(year)"),
]
GROUPS = {"": "", " per genre": "genre", " per author": "author"}


def _filters(rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, phrase, SQL condition) of every filter value used."""
    out = [("genre", f" in the {g} genre", f"genre = '{g}'") for g in GENRES]
    out += [("year", f" published after {y}", f"year > {y}") for y in (1995, 2000, 2005, 2010, 2015, 2020)]
    out += [("pages", f" with more than {p} pages", f"pages > {p}") for p in (150, 200, 250, 300, 400, 500)]
    return out


def _library_sql(expr: str, group: str, condition: str) -> str:
    select = f"SELECT {group}, {expr} FROM books" if group else f"SELECT {expr} FROM books"
    where = f" WHERE {condition}" if condition else ""
    return select + where + (f" GROUP BY {group}" if group else "")


def _books(seed: int, n: int, years: tuple[int, int], pages: tuple[int, int],
           old: int = 0) -> Callable[[Any], None]:
    """A books table of ``n`` random books; with ``old``, the last genre and author have only ``old`` books of
    their own, old and short ones (so every year or page filter changes their group)."""
    def setup(con: Any) -> None:
        rng = random.Random(seed)
        genres, authors = (GENRES[:-1], AUTHORS[:-1]) if old else (GENRES, AUTHORS)
        rows = [(i, f"Book {i}", rng.choice(authors), rng.choice(genres), rng.randint(*years), rng.randint(*pages))
                for i in range(1, n + 1)]
        rows += [(n + k, f"Old book {k}", AUTHORS[-1], GENRES[-1], 1990 + k, 95 + k) for k in range(1, old + 1)]
        con.execute("CREATE TABLE books (id INTEGER, title VARCHAR, author VARCHAR, genre VARCHAR, year INTEGER, "
                    "pages INTEGER)")
        con.executemany("INSERT INTO books VALUES (?, ?, ?, ?, ?, ?)", rows)
    return setup


class Suite:
    """Execution on several databases (a "test suite", as Spider's): an answer is right only where it returns
    the reference's rows on every one. One table can hide a dropped filter (every genre has a book after 2000, so
    ``max(year)`` per genre is the same with or without it); a second, small table, where one genre and one
    author have only old, short books, shows it."""

    def __init__(self, *setups: Callable[[Any], None]):
        self.boxes = [Sandbox(setup=s) for s in setups]

    def match(self, prediction: str | None, reference: str) -> bool:
        return all(box.match(prediction, reference) for box in self.boxes)

    def close(self) -> None:
        for box in self.boxes:
            box.close()


def library_prompt(question: str) -> str:
    return f"Table: {LIBRARY_SCHEMA}\nQuestion: {question}\nAnswer with one DuckDB SQL query."


def library_task(seed: int = 5) -> Task:
    rng = random.Random(seed)
    filters = _filters(rng)
    train, test = [], []
    for phrasings, expr in MEASURES:
        for phrasing in phrasings:
            for g, group in GROUPS.items():  # a measure, grouped or not, no filter
                train.append((library_prompt(phrasing.format(g=g, f="")), _library_sql(expr, group, "")))
            for _, f, condition in filters:  # a measure and one filter, not grouped
                train.append((library_prompt(phrasing.format(g="", f=f)), _library_sql(expr, "", condition)))
            for g, group in GROUPS.items():  # held out: a grouping and a filter together (never trained)
                if not group:
                    continue
                for kind, f, condition in rng.sample(filters, 5):
                    if kind == group:  # "per genre in the fantasy genre": not a question
                        continue
                    test.append((library_prompt(phrasing.format(g=g, f=f)), _library_sql(expr, group, condition),
                                 "combination"))
    rng.shuffle(train)
    suite = Suite(_books(11, 120, (1990, 2024), (90, 700)), _books(12, 18, (1996, 2012), (160, 320), old=3))
    return Task("library", train, test, 64, suite.match, suite.close)


# ----------------------------------------------------------------------------------------------------- tickets


def tickets_task() -> Task:
    from defaults_study import make_tickets

    train, test = make_tickets(held_per_queue=6)
    return Task("tickets", train, [(p, c, "phrasing") for p, c in test], 8,
                lambda pred, gold: _short(pred).lower() == gold)


# ----------------------------------------------------------------------------------------------------- extract

CITIES = ["Lyon", "Porto", "Oslo", "Austin", "Osaka", "Dublin", "Cairo", "Lima", "Quito", "Perth", "Graz", "Turin"]
HELD_CITIES = ["Bergen", "Kyoto", "Tunis", "Leeds"]
NAMES = ["Ana Silva", "Ben Berg", "Chloe Moreau", "David Kim", "Elena Novak", "Farid Haddad", "Grace Costa",
         "Hugo Lund", "Ines Tanaka", "Jonas Murphy", "Kenji Sato", "Lena Wolf"]
HELD_NAMES = ["Mara Quist", "Nils Ortega", "Olga Petrov", "Pablo Reyes"]
TEMPLATES = [
    "Hi, this is {name}. My order {order} should go to our office in {city}, please.",
    "{name} here: could you send order {order} to {city} instead of the old address?",
    "Order {order} for {name} has not reached {city} yet.",
    "Please cancel order {order}. Thanks, {name} ({city})",
    "Delivery address update for order {order}: {city}. Regards, {name}",
    "Hello! {name} from {city} asking about the status of order {order}.",
]
HELD_TEMPLATES = [
    "We in {city} are still waiting. Reference {order}. Signed, {name}",
    "Can you tell me when {order} ships? I moved to {city}. - {name}",
]
FIELDS = {"order number": "order", "city": "city", "customer name": "name"}


def extract_prompt(message: str, field_name: str) -> str:
    return f"Message: {message}\nWhat is the {field_name} in this message? Answer with the value only."


def extract_task(seed: int = 3) -> Task:
    rng = random.Random(seed)

    def rows(templates: list[str], cities: list[str], names: list[str], n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            v = {"name": rng.choice(names), "city": rng.choice(cities), "order": str(rng.randint(10000, 99999))}
            message = rng.choice(templates).format(**v)
            field_name = rng.choice(list(FIELDS))
            out.append((extract_prompt(message, field_name), v[FIELDS[field_name]]))
        return out

    train = rows(TEMPLATES, CITIES, NAMES, 240)
    test = [(p, c, "phrasing") for p, c in rows(HELD_TEMPLATES, CITIES, NAMES, 24)]
    test += [(p, c, "value") for p, c in rows(TEMPLATES, HELD_CITIES, HELD_NAMES, 24)]
    return Task("extract", train, test, 16, lambda pred, gold: _short(pred) == gold)


TASKS = {"sql": sql_task, "library": library_task, "tickets": tickets_task, "extract": extract_task}


def make(name: str, train_rows: int | None = None, test_rows: int | None = None) -> Task:
    """Task ``name``, its training rows capped at ``train_rows`` and its held-out rows at ``test_rows`` (fixed
    samples: the same for every recipe and seed)."""
    task = TASKS[name]()
    task.train = _cap(task.train, train_rows, 1)
    task.test = _cap(task.test, test_rows, 2)
    return task
