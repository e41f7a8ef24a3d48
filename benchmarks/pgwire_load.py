"""Concurrent PostgreSQL wire clients under load: protocol errors, wrong answers, statements/s, the server's RSS.

``--clients`` (20) psycopg connections to ``duckdb-ft serve DB --pg-port`` (a subprocess on free localhost ports)
run a mix of statements for ``--seconds`` (60), each client drawing from its own seeded random stream:

- point lookups with a bound id over a 200-row table of integers, text, decimals, dates and lists (40%),
- a GROUP BY with a bound threshold (15%), a window function by category (10%),
- a generated result of 10, 1,000 or 5,000 rows (10%),
- a statement the user's role may not run (5%: the right answer is its refusal, SQLSTATE 42501),
- ``complete()`` on the model with ``max_tokens`` 8, greedy, over 8 prompts (20%).

Every answer (rows, or the refusal's SQLSTATE) is compared with the in-process answer to the same statement,
computed once by a user session before the server starts. One client in four uses psycopg's ``ClientCursor`` (the
simple query protocol); the others the extended protocol (bound parameters; psycopg prepares a statement after 5
uses). A protocol error is anything else: a lost connection, an error without the expected SQLSTATE, a failed
log-in; the client reconnects and goes on.

Side by side, in the same run and before the server starts: the same clients as threads of one Python process,
each a cursor of an in-process user session (what an application on the database's machine would use), for
``--reference-seconds`` (10), with the same checks. The server's RSS (psutil) is sampled every second from the
moment the clients start; printed at the start, after 10 s, at the end and at its peak.

The model is a two-layer Llama with SmolLM2's tokenizer (random weights, as in the test suite: the answers are
nonsense, the work of the decode loop is real) unless ``--model`` names another (``smollm2-135m``, or a folder).
Run from the repository root::

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/pgwire_load.py
    .venv/bin/python benchmarks/pgwire_load.py --seconds 10 --clients 4 --reference-seconds 5
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import psutil
import psycopg

import duckdb_ft
from duckdb_ft.server.pgsession import sqlstate

import machine  # benchmarks/machine.py

PASSWORD = "load test password"
CATEGORIES = ["fruit", "tools", "books", "games"]
PROMPTS = [f"Say the word {i}" for i in range(8)]
#: (kind, weight, SQL with %s placeholders, the parameter lists it is run with).
MIX: list[tuple[str, int, str, list[list[Any]]]] = [
    ("lookup", 40, "SELECT id, name, category, price, added, tags FROM items WHERE id = %s",
     [[i] for i in range(1, 201)]),
    ("group by", 15, "SELECT category, count(*), sum(price), min(added) FROM items WHERE price > %s "
     "GROUP BY category ORDER BY category", [[t] for t in (0, 10, 50, 90)]),
    ("window", 10, "SELECT name, rank() OVER (ORDER BY price DESC, id) AS r FROM items WHERE category = %s "
     "ORDER BY r", [[c] for c in CATEGORIES]),
    ("rows", 10, "SELECT i, 'row ' || i AS s FROM range(%s) t(i)", [[10], [1000], [5000]]),
    ("refused", 5, "SELECT count(*) FROM secret WHERE x > %s", [[0]]),
    ("complete", 20, "SELECT json_extract_string(complete('bench', %s, '{\"max_tokens\": 8}'), "
     "'$.choices[0].messages')", [[p] for p in PROMPTS]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def build(db: str, model: str) -> None:
    """Tables items (granted) and secret (not), role analyst, users alice and bob, base model ``bench``."""
    from duckdb_ft.ml import models

    path = model if os.path.isdir(model) else models.resolve(model)
    con = duckdb_ft.connect(db)
    con.execute("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS name, "
                f"{CATEGORIES}[1 + i % 4] AS category, (i * 7 % 100 + 0.25)::DECIMAL(10, 2) AS price, "
                "DATE '2026-01-01' + i::INTEGER AS added, ['t' || (i % 3), 't' || (i % 5)] AS tags "
                "FROM range(1, 201) t(i)")
    con.execute("CREATE TABLE secret AS SELECT range AS x FROM range(10)")
    for sql in ["CREATE ROLE analyst", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                "GRANT SELECT ON TABLE items TO ROLE analyst",
                f"CREATE BASE MODEL bench FROM '{path}'", "GRANT USAGE ON BASE MODEL bench TO ROLE analyst"]:
        con.execute(sql).fetchall()
    for user in ("alice", "bob"):
        con.execute(f"CREATE USER {user} PASSWORD = '{PASSWORD}' DEFAULT_ROLE = analyst").fetchall()
        con.execute(f"GRANT ROLE analyst TO USER {user}").fetchall()
    con.close()


def statements() -> list[tuple[str, str, list[Any]]]:
    """Every statement of the mix: (kind, SQL, parameters)."""
    return [(kind, sql, params) for kind, _, sql, values in MIX for params in values]


def answer_of(run: Callable[[], list]) -> tuple[str, Any]:
    """("ok", rows) or ("refused", SQLSTATE): an answer as both sides give it."""
    try:
        return "ok", [tuple(r) for r in run()]
    except psycopg.Error as e:
        if e.sqlstate is None or e.sqlstate.startswith(("08", "XX")):  # the connection, not the statement
            raise
        return "refused", e.sqlstate
    except Exception as e:  # noqa: BLE001 - an in-process duckdb-ft error: the SQLSTATE the wire gives it
        return "refused", sqlstate(e)


class Tally:
    """What the clients of one pass saw (shared by their threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter = Counter()
        self.wrong: list[str] = []
        self.protocol: list[str] = []

    def add(self, kind: str, ok: bool, what: str = "") -> None:
        with self.lock:
            self.done[kind] += 1
            if not ok:
                self.wrong.append(what)


def draw(rng: random.Random) -> tuple[str, str, list[Any]]:
    kind, _, sql, values = rng.choices(MIX, weights=[m[1] for m in MIX])[0]
    return kind, sql, rng.choice(values)


def run_clients(clients: int, seconds: float, expected: dict, tally: Tally,
                connect: Callable[[int], Any], execute: Callable[[Any, str, list], list]) -> float:
    """``clients`` threads running the mix for ``seconds``; the pass's wall time."""
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        con = None
        while time.monotonic() < stop:
            try:
                if con is None:
                    con = connect(k)
                kind, sql, params = draw(rng)
                got = answer_of(lambda: execute(con, sql, params))
                want = expected[(sql, tuple(params))]
                tally.add(kind, got == want, f"{kind} {params}: {str(got)[:200]} != {str(want)[:200]}")
            except Exception as e:  # noqa: BLE001 - a lost connection, a failed log-in: counted, then reconnect
                with tally.lock:
                    tally.protocol.append(f"client {k}: {type(e).__name__}: {e}")
                try:
                    con is not None and con.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
                con = None
                time.sleep(0.1)
        if con is not None:
            con.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def in_process(sql: str) -> str:
    return sql.replace("%s", "?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the wire clients run (60)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    p.add_argument("--reference-seconds", type=float, default=10.0,
                   help="how long the in-process clients run before the server starts (10; 0 leaves them out)")
    p.add_argument("--model", default="", help="a base model name or folder (default: the tiny test model)")
    args = p.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="pgwire_load_"))
    db = str(folder / "load.duckdb")
    build(db, args.model or machine.tiny_model(folder / "tiny"))

    # The in-process answers, one statement at a time; then the in-process clients.
    user = duckdb_ft.connect(db, user="alice")
    expected = {(sql, tuple(params)): answer_of(lambda: user.execute(in_process(sql), params).fetchall())
                for _, sql, params in statements()}
    assert all(a[0] == "ok" for (sql, _), a in expected.items() if "secret" not in sql), expected
    reference = Tally()
    ref_seconds = 0.0
    if args.reference_seconds > 0:
        ref_seconds = run_clients(args.clients, args.reference_seconds, expected, reference,
                                  lambda k: user.cursor(),
                                  lambda con, sql, params: con.execute(in_process(sql), params).fetchall())
    user.close()

    port, log = free_port(), open(folder / "serve.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "duckdb_ft", "serve", db, "--port", str(free_port()),
                               "--pg-port", str(port)], stdout=subprocess.DEVNULL, stderr=log)

    def connect(k: int) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=port, user=("alice", "bob")[k % 2], password=PASSWORD,
                               dbname="load", autocommit=True, connect_timeout=30,
                               cursor_factory=psycopg.ClientCursor if k % 4 == 3 else psycopg.Cursor)

    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                warm = connect(0)
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"duckdb-ft serve did not start:\n{Path(log.name).read_text()[-2000:]}")
                time.sleep(0.2)
        warm.execute(MIX[-1][2], [PROMPTS[0]]).fetchall()  # the model loaded before anything is timed
        warm.close()

        proc, samples, sampling = psutil.Process(server.pid), [], threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not sampling.is_set():
                samples.append((time.monotonic() - started, proc.memory_info().rss))
                sampling.wait(1.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        wire = Tally()
        wire_seconds = run_clients(args.clients, args.seconds, expected, wire, connect,
                                   lambda con, sql, params: con.execute(sql, params).fetchall())
        samples.append((wire_seconds, proc.memory_info().rss))
        sampling.set()
        sampler.join()
        alive = connect(0)
        still = alive.execute("SELECT count(*) FROM items").fetchone() == (200,)
        alive.close()
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(120)
        log.close()
    traceback = "Traceback" in Path(log.name).read_text()

    mib = 1 / 2**20
    after10 = next((rss for t, rss in samples if t >= 10), samples[-1][1])
    total, ref_total = sum(wire.done.values()), sum(reference.done.values())
    print(f"{args.clients} clients, {args.seconds:.0f} s over the wire ({wire_seconds:.1f} s wall), model "
          f"{args.model or 'tiny (2-layer Llama)'}")
    print(f"over the wire: {total} statements, {total / wire_seconds:.1f} statements/s "
          f"({', '.join(f'{k} {n}' for k, n in sorted(wire.done.items()))})")
    if ref_total:
        print(f"in-process:    {ref_total} statements, {ref_total / ref_seconds:.1f} statements/s "
              f"({args.reference_seconds:.0f} s); wire / in-process: {total / wire_seconds / (ref_total / ref_seconds):.2f}x")
        print(f"in-process wrong results: {len(reference.wrong)}, errors: {len(reference.protocol)}")
    print(f"protocol errors: {len(wire.protocol)}; wrong results: {len(wire.wrong)}")
    for line in (wire.protocol + wire.wrong + reference.protocol + reference.wrong)[:10]:
        print("   ", line)
    print(f"server RSS: start {samples[0][1] * mib:.0f} MiB, after 10 s {after10 * mib:.0f} MiB, end "
          f"{samples[-1][1] * mib:.0f} MiB, peak {max(r for _, r in samples) * mib:.0f} MiB ({len(samples)} samples)")
    print(f"server afterwards: answering {still}, exit status {status}, traceback in its log {traceback}")
    bad = wire.protocol or wire.wrong or reference.wrong or reference.protocol or not still or status or traceback
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
