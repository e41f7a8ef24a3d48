"""The PostgreSQL wire door (duckdb_ft/server/pgwire.py) with real clients against a real server subprocess:
log-in by password and by token, one duckdb-ft session per connection, errors as SQLSTATEs, simple and extended
protocol with bound parameters, types, the catalog for psql and SQLAlchemy, cancel, and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from conftest import (  # noqa: E402
    COMMAND, ONE_EPOCH, PRIVILEGE_MATRIX, PRIVILEGE_USERS, Server, allow_base_model, wait_for)

PASSWORD = "alice password 1"
BOB = "bobs password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WireServer(Server):
    """``duckdb-ft serve DB --pg-port N`` on free localhost ports (:class:`conftest.Server`), with psycopg."""

    def __init__(self, db: Path):
        self.port = free_port()
        super().__init__(str(db), "--pg-port", str(self.port))

    def connect(self, user="alice", password=PASSWORD, **kw):
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, password=password, dbname="shop",
                               connect_timeout=20, **kw)

    def sqlalchemy_url(self, user="alice", password=PASSWORD) -> str:
        return f"postgresql+psycopg://{user}:{password.replace(' ', '%20')}@127.0.0.1:{self.port}/shop"


def build(db: Path, tiny_model_path: str) -> str:
    """The shop: tables pub and pairs (alice's role reads them) and secret (it does not), users alice (who may
    create models from the tiny base model) and bob (role reader); alice's token."""
    import duckdb_ft

    con = duckdb_ft.connect(str(db))
    for sql in ["CREATE ROLE analyst", f"CREATE USER alice PASSWORD = '{PASSWORD}' DEFAULT_ROLE = analyst",
                "GRANT ROLE analyst TO USER alice", "CREATE ROLE reader",
                f"CREATE USER bob PASSWORD = '{BOB}' DEFAULT_ROLE = reader", "GRANT ROLE reader TO USER bob", "GRANT USAGE ON SCHEMA main TO ROLE reader",
                "CREATE TABLE pairs AS SELECT 'Say the word ' || i AS p, 'apple apple apple' AS c FROM range(48) t(i)",
                "GRANT SELECT ON TABLE pairs TO ROLE analyst", "GRANT CREATE MODEL ON SCHEMA main TO ROLE analyst",
                "CREATE TABLE pub(id INTEGER, name VARCHAR, price DECIMAL(10,2))",
                "INSERT INTO pub VALUES (1, 'apple', 1.50), (2, 'pear', NULL), (3, 'it''s', 0.25)",
                "CREATE TABLE secret(x INTEGER)", "CREATE VIEW pub_names AS SELECT name FROM pub",
                "GRANT USAGE ON SCHEMA main TO ROLE analyst", "GRANT SELECT ON TABLE pub TO ROLE analyst",
                "GRANT SELECT ON VIEW pub_names TO ROLE analyst"]:
        con.execute(sql)
    allow_base_model(con, tiny_model_path)
    (row,) = con.execute("ALTER USER alice ADD PROGRAMMATIC ACCESS TOKEN wire").fetchall()
    con.close()
    return row[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_path):
    db = tmp_path_factory.mktemp("pgwire") / "shop.duckdb"
    token = build(db, tiny_model_path)
    shutil.copyfile(db, db.with_name("in_process.duckdb"))  # the same database, for in-process answers
    s = WireServer(db)
    s.in_process = str(db.with_name("in_process.duckdb"))
    s.token = token
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log() and "Warning" not in s.log(), s.log()


def sqlstate_of(con, sql, params=None) -> str:
    with pytest.raises(psycopg.Error) as e:
        con.execute(sql, params)
    con.rollback()
    return e.value.sqlstate


def test_a_user_logs_in_with_its_password_or_its_token_and_reads_what_its_role_may(server):
    for secret in (PASSWORD, server.token):
        with server.connect(password=secret) as con:
            assert con.execute("SELECT id, name FROM pub ORDER BY id").fetchall() == [
                (1, "apple"), (2, "pear"), (3, "it's")]
            assert sqlstate_of(con, "SELECT * FROM secret") == "42501"


def test_wrong_password_unknown_user_and_another_users_token_get_one_error(server):
    messages = set()
    for user, secret in [("alice", "wrong password"), ("mallory", PASSWORD), ("bob", server.token)]:
        with pytest.raises(psycopg.OperationalError) as e:
            server.connect(user=user, password=secret)
        messages.add(str(e.value).rsplit("FATAL:", 1)[-1].strip())
    assert len(messages) == 1 and "authentication failed" in messages.pop()


def test_errors_come_back_with_their_sqlstate_and_duckdb_ft_message(server):
    with server.connect() as con:
        assert sqlstate_of(con, "SELECT * FROM secret") == "42501"
        assert sqlstate_of(con, "SELEC 1") == "42601"
        assert sqlstate_of(con, "SELECT finetune('DESCRIBE', 'ft_nope')") == "42P01"
        assert sqlstate_of(con, "SELECT finetune('NOPE')") == "22023"
        with pytest.raises(psycopg.Error, match="fine-tuning job 'ft_nope' does not exist"):
            con.execute("SELECT finetune('DESCRIBE', 'ft_nope')")
        con.rollback()
        assert con.execute("SELECT 1").fetchone() == (1,)  # the connection goes on after errors


def test_parameters_are_bound_not_spliced_in_extended_and_simple_protocol(server):
    with server.connect(autocommit=True) as con:
        hostile = "x' OR '1'='1"
        assert con.execute("SELECT id FROM pub WHERE name = %s", [hostile]).fetchall() == []
        assert con.execute("SELECT id FROM pub WHERE name = %s", ["it's"]).fetchall() == [(3,)]
        assert con.execute("SELECT %s::INTEGER + %s", [40, 2]).fetchone() == (42,)
        for _ in range(7):  # past psycopg's prepare threshold: a named statement, described then executed
            assert con.execute("SELECT name FROM pub WHERE id = %s", [1]).fetchone() == ("apple",)
        cur = psycopg.ClientCursor(con)  # the simple protocol (psycopg quotes the values itself)
        assert cur.execute("SELECT id FROM pub WHERE name = %s", ["it's"]).fetchall() == [(3,)]
        assert cur.execute("SELECT 1; SELECT 2").fetchall() == [(2,)]


def test_each_connection_is_its_own_session_of_its_user(server):
    with server.connect(autocommit=True) as a, server.connect(autocommit=True) as b:
        a.execute("SET VARIABLE mine = 'a'")
        assert a.execute("SELECT getvariable('mine')").fetchone() == ("a",)
        assert b.execute("SELECT getvariable('mine')").fetchone() == (None,)
        assert sqlstate_of(b, "USE ROLE admin") == "42501"
        b.execute("USE ROLE public")  # switches b's role, not a's
        assert sqlstate_of(b, "SELECT count(*) FROM pub") == "42501"
        assert a.execute("SELECT count(*) FROM pub").fetchone() == (3,)
        assert sqlstate_of(b, "CREATE TABLE mine(x INTEGER)") == "42501"  # analyst may not create


def test_what_drivers_and_bi_tools_ask_on_connecting_is_answered(server):
    with server.connect(autocommit=True) as con:  # DBeaver's, then the like in one statement
        assert con.execute("SELECT current_schema(),session_user").fetchone() == ("main", "alice")
        cur = con.execute("SELECT current_database() AS db, pg_catalog.version(), current_user")
        assert [c.name for c in cur.description] == ["db", "version", "current_user"]
        db, version, user = cur.fetchone()
        assert (db, user) == ("shop", "alice") and version.startswith("PostgreSQL 15")


def test_transactions_roll_back_after_an_error(server):
    with server.connect() as con:  # psycopg opens a transaction before the first statement
        assert sqlstate_of(con, "SELECT finetune('DESCRIBE', 'ft_nope')") == "42P01"
        assert con.execute("SELECT count(*) FROM pub").fetchone() == (3,)


def test_duckdb_types_arrive_as_the_postgresql_types_a_client_decodes(server):
    import datetime
    import decimal
    import uuid

    with server.connect(autocommit=True) as con:
        cur = con.execute(
            "SELECT 1::TINYINT t, 2::INTEGER i, 3::BIGINT b, 170141183460469231731687303715884105727::HUGEINT h, "
            "1.5::REAL r, 2.25::DOUBLE d, 'inf'::DOUBLE inf, 12.34::DECIMAL(10,2) dec, 'x y' v, true bo, "
            "DATE '2024-01-02' dt, TIME '01:02:03.5' ti, TIMESTAMP '2024-01-02 03:04:05.123' ts, "
            "TIMESTAMPTZ '2024-01-02 03:04:05+00' tz, INTERVAL '1 day 2 hours' iv, -INTERVAL '90 minutes' neg, "
            "'{\"a\": [1, 2]}'::JSON j, [1, 2, NULL] li, ['a', 'b,c', '\"q\"', '', 'NULL'] ls, [[1], [2, 3]] nested, "
            "{'x': 1, 'y': 'z'} st, MAP {'k': 1} m, 'ab'::BLOB bl, "
            "'6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID u, NULL::INTEGER n")
        row = dict(zip([c.name for c in cur.description], cur.fetchone()))
        oids = {c.name: c.type_code for c in cur.description}
    assert row == {
        "t": 1, "i": 2, "b": 3, "h": decimal.Decimal(2**127 - 1), "r": 1.5, "d": 2.25, "inf": float("inf"),
        "dec": decimal.Decimal("12.34"), "v": "x y", "bo": True, "dt": datetime.date(2024, 1, 2),
        "ti": datetime.time(1, 2, 3, 500000), "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, 123000),
        "tz": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "iv": datetime.timedelta(days=1, hours=2), "neg": -datetime.timedelta(minutes=90),
        "j": {"a": [1, 2]}, "li": [1, 2, None], "ls": ["a", "b,c", '"q"', "", "NULL"], "nested": [[1], [2, 3]],
        "st": {"x": 1, "y": "z"}, "m": {"k": 1}, "bl": b"ab", "u": uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        "n": None}
    assert oids == {"t": 21, "i": 23, "b": 20, "h": 1700, "r": 700, "d": 701, "inf": 701, "dec": 1700, "v": 25,
                    "bo": 16, "dt": 1082, "ti": 1083, "ts": 1114, "tz": 1184, "iv": 1186, "neg": 1186, "j": 114,
                    "li": 1007, "ls": 1009, "nested": 114, "st": 114, "m": 114, "bl": 17, "u": 2950, "n": 23}


def test_empty_results_keep_their_columns_and_large_results_arrive_whole(server):
    with server.connect(autocommit=True) as con:
        cur = con.execute("SELECT id, name FROM pub WHERE false")
        assert cur.fetchall() == [] and [c.name for c in cur.description] == ["id", "name"]
        n = 0
        total = 0
        for (i, s) in con.cursor().stream("SELECT i, 'row ' || i FROM range(100000) t(i)"):
            n, total = n + 1, total + i
            assert s == f"row {i}"
        assert (n, total) == (100000, 100000 * 99999 // 2)


def test_the_catalog_shows_only_what_the_role_may_read_and_nothing_else(server):
    with server.connect(autocommit=True) as con:
        names = {r[0] for r in con.execute("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                                           "ON n.oid = c.relnamespace WHERE n.nspname = 'main'").fetchall()}
        assert names == {"pairs", "pub", "pub_names"}
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'secret'"
                           ).fetchone() == (0,)
        for attack in ("SELECT * FROM pg_catalog.pg_class, read_csv('/etc/passwd')",
                       "SELECT * FROM pg_catalog.pg_class, secret", "SELECT * FROM pg_catalog.pg_class, duckdb_ft.jobs"):
            with pytest.raises(psycopg.Error):
                con.execute(attack)
        # the copy holds no rows: a catalog query that names a table sees it empty, never its rows
        assert con.execute("SELECT count(*) FROM pg_catalog.pg_class, pub").fetchone() == (0,)


def test_sqlalchemy_reflects_and_pandas_reads_over_the_wire(server):
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(server.sqlalchemy_url())
    try:
        inspector = sa.inspect(engine)
        assert inspector.get_table_names() == ["pairs", "pub"]
        assert inspector.get_view_names() == ["pub_names"]
        columns = {c["name"]: c["type"] for c in inspector.get_columns("pub")}
        assert list(columns) == ["id", "name", "price"]
        assert isinstance(columns["id"], sa.Integer) and isinstance(columns["name"], sa.String)
        assert (columns["price"].precision, columns["price"].scale) == (10, 2)
        with engine.connect() as c:
            frame = pd.read_sql(sa.text("SELECT id, name FROM pub WHERE id <= :n ORDER BY id"), c, params={"n": 2})
            assert frame.to_dict("list") == {"id": [1, 2], "name": ["apple", "pear"]}
            pub = sa.Table("pub", sa.MetaData(), autoload_with=c)
            assert c.execute(sa.select(pub.c.name).where(pub.c.id == 3)).scalar_one() == "it's"
    finally:
        engine.dispose()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed (apt-get install postgresql-client)")
def test_psql_lists_and_describes_tables_as_the_role_sees_them(server):
    def psql(command, ok=True):
        done = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", "alice", "shop", "-c",
                               command], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGPASSWORD": PASSWORD, "PGCONNECT_TIMEOUT": "20"})
        assert (done.returncode == 0) == ok, done.stderr
        return done.stdout + done.stderr

    listing = psql(r"\dt")
    assert "pub" in listing and "pairs" in listing and "secret" not in listing and "(2 rows)" in listing
    described = psql(r"\d pub")
    assert 'Table "main.pub"' in described
    for column, kind in [("id", "integer"), ("name", "character varying"), ("price", "numeric(10,2)")]:
        assert any(line.split("|")[0].strip() == column and line.split("|")[1].strip() == kind
                   for line in described.splitlines() if "|" in line), described
    assert "apple" in psql("SELECT name FROM pub ORDER BY id")
    assert 'Did not find any relation named "secret"' in psql(r"\d secret", ok=False)
    databases = psql(r"\l")  # the database the client named, alone
    assert re.search(r"^ shop +\| alice +\| UTF8 ", databases, re.M) and "(1 row)" in databases, databases
    assert re.search(r"^ alice +\|", psql(r"\du"), re.M)  # the session's user, alone
    assert "(0 rows)" in psql(r"\df")  # no functions of the database (the catalog copy's own are not shown)
    assert re.search(r"^ main +\| pub +\| table ", psql(r"\dt+"), re.M)  # sizes: none (NULL)
    assert re.search(r"^ price +\| numeric\(10,2\) ", psql(r"\d+ pub"), re.M)


def test_a_cancel_request_stops_the_running_statement_only(server):
    with server.connect(autocommit=True) as a, server.connect(autocommit=True) as b:
        threading.Timer(1.0, a.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.execute("SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3")
        assert time.monotonic() - started < 60
        assert a.execute("SELECT 1").fetchone() == (1,)  # the connection goes on
        assert b.execute("SELECT count(*) FROM pub").fetchone() == (3,)


@pytest.mark.slow
def test_finetune_over_the_wire_trains_completes_and_is_granted_to_another_user(server):
    with server.connect(autocommit=True) as con:
        job = con.execute("SELECT finetune('CREATE', 'wire_model', 'tiny', 'SELECT p AS prompt, c AS completion "
                          "FROM pairs', NULL, '{\"max_epochs\": 1, \"learning_rate\": 0.001}')").fetchone()[0]
        assert job.startswith("ft_")
        threading.Timer(0.5, con.cancel_safe).start()
        with pytest.raises(psycopg.errors.QueryCanceled):  # WAIT is cancelled; the job goes on
            con.execute("SELECT finetune('WAIT', %s, 600)", [job])
        described = con.execute("FROM finetune('DESCRIBE', %s)", [job])
        status = dict(zip([c.name for c in described.description], described.fetchone()))["status"]
        assert status in ("PENDING", "IN_PROGRESS", "SUCCESS")
        assert con.execute("SELECT finetune('WAIT', %s, 600)", [job]).fetchone()[0] == "SUCCESS"
        answer = con.execute("SELECT complete('wire_model', 'Say the word 3')").fetchone()[0]
        assert isinstance(answer, str)
        assert sqlstate_of(con, "SELECT * FROM secret") == "42501"
        con.execute("GRANT USAGE ON MODEL wire_model TO ROLE reader")
    with server.connect(user="bob", password=BOB, autocommit=True) as bob:
        assert bob.execute("SELECT complete('wire_model', 'Say the word 3')").fetchone()[0] == answer


# ------------------------------------------------------------------------------------------------- bad input


def read_message(sock) -> tuple[bytes, bytes]:
    """One backend message: its type and body (b"", b"" when the server closed the connection)."""
    head = sock.recv(5, socket.MSG_WAITALL)
    if len(head) < 5:
        return b"", b""
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], sock.recv(length - 4, socket.MSG_WAITALL)


def until(sock, code: bytes) -> list[tuple[bytes, bytes]]:
    got = []
    while True:
        message = read_message(sock)
        got.append(message)
        if message[0] in (code, b""):
            return got


def raw_login(server, user="alice", password=PASSWORD) -> socket.socket:
    """A logged-in raw socket (start-up, cleartext password, up to ReadyForQuery)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0shop\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    assert read_message(sock) == (b"R", struct.pack("!i", 3))
    secret = password.encode() + b"\0"
    sock.sendall(b"p" + struct.pack("!i", len(secret) + 4) + secret)
    assert until(sock, b"Z")[-1][0] == b"Z"
    return sock


def send(sock, code: bytes, body: bytes) -> None:
    sock.sendall(code + struct.pack("!i", len(body) + 4) + body)


def alive(server) -> None:
    with server.connect(autocommit=True) as con:
        assert con.execute("SELECT count(*) FROM pub").fetchone() == (3,)


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x08\x12\x34\x56\x78", b"\xff\xff\xff\xff", b"GET / HTTP/1.1\r\n\r\n",
                                     b"\x00\x00\x00\x03"])
def test_garbage_before_log_in_closes_the_connection_and_the_server_goes_on(server, garbage):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        assert until(sock, b"")[-1][0] == b""  # closed (after an error message, if any)
    alive(server)


def test_malformed_messages_after_log_in_get_an_error_never_a_crash(server):
    cases = [(b"P", b"no terminators"), (b"B", b"\0nope\0\0\0\0\0\0\0"), (b"E", b"missing\0"),
             (b"D", b"Xwhat\0"), (b"B", b"\0\0\x00\x01")]
    for code, body in cases:
        with raw_login(server) as sock:
            send(sock, code, body)
            send(sock, b"S", b"")
            got = until(sock, b"Z")
            assert any(c == b"E" for c, _ in got), (code, body, got)
    with raw_login(server) as sock:  # a length no message has: an error, then the connection closes
        sock.sendall(b"Q" + struct.pack("!i", 2**31 - 1))
        got = until(sock, b"")
        assert got[0][0] == b"E" and b"08P01" in got[0][1]
    with raw_login(server) as sock:
        send(sock, b"d", b"copy data")  # COPY is not supported: error, closed
        assert until(sock, b"")[0][0] == b"E"
    alive(server)


@pytest.mark.slow
def test_a_10_mb_query_and_10000_parameters_get_an_answer_or_an_error(server):
    with server.connect(autocommit=True) as con:
        big = "x" * (10 * 2**20)
        assert con.execute(f"SELECT length('{big}')").fetchone() == (len(big),)
        try:
            row = con.execute("SELECT " + ", ".join(["%s::INTEGER"] * 10000), list(range(10000))).fetchone()
            assert list(row) == list(range(10000))
        except psycopg.Error as e:
            assert e.sqlstate
        assert con.execute("SELECT 1").fetchone() == (1,)
    alive(server)


def test_a_client_that_leaves_mid_result_harms_no_one(server):
    sock = raw_login(server)
    query = b"SELECT i, repeat('x', 100) FROM range(1000000) t(i)\0"
    send(sock, b"Q", query)
    assert read_message(sock)[0] == b"T"
    sock.close()  # gone while rows are being sent
    alive(server)


@pytest.mark.slow
def test_twenty_concurrent_clients_get_right_answers(server):
    errors, answers = [], []

    def client(k):
        try:
            with server.connect(autocommit=True) as con:
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    assert con.execute("SELECT id, name FROM pub WHERE id = %s", [k % 3 + 1]).fetchone() == (
                        k % 3 + 1, ["apple", "pear", "it's"][k % 3])
                    assert con.execute("SELECT sum(i) FROM range(%s) t(i)", [k * 100]).fetchone() == (
                        sum(range(k * 100)) if k else None,)
                answers.append(con.execute(
                    "SELECT complete('tiny', 'Say the word 1', '{\"max_tokens\": 3}')").fetchone()[0])
        except Exception as e:  # noqa: BLE001 - every failure is collected and reported
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(answers) == 20
    assert len({json.dumps(json.loads(a)["choices"]) for a in answers}) == 1  # greedy: one answer for all
    alive(server)


def readme_blocks() -> dict[str, str]:
    """The sql, sh and python blocks of the README's "PostgreSQL clients" section, by language."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### PostgreSQL clients", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(sql|sh|python)\n(.*?)```", section, re.S)
    assert sorted(lang for lang, _ in blocks) == ["python", "sh", "sql"], blocks
    return dict(blocks)


@pytest.mark.slow
def test_the_readme_recipe_runs_from_a_new_file_to_psql_and_pandas(tmp_path, tiny_model_path):
    """The README's section as a user follows it: its SQL in the shell on a new file, `duckdb-ft serve --pg-port`,
    its psql line and its Python (the built-in model swapped for the tiny one, registered under its name)."""
    import duckdb_ft

    blocks = readme_blocks()
    db = tmp_path / "shop.duckdb"
    done = subprocess.run([*COMMAND, str(db)], input=blocks["sql"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Error" not in done.stdout + done.stderr, done.stdout + done.stderr
    admin = duckdb_ft.connect(str(db))
    allow_base_model(admin, tiny_model_path)
    admin.close()
    serve, *lines = blocks["sh"].strip().splitlines()
    assert serve.startswith("duckdb-ft serve shop.duckdb --pg-port 5433 &"), serve
    server = WireServer(db)  # the same command, on free ports
    try:
        assert f"PostgreSQL protocol at 127.0.0.1:{server.port}" in server.log()  # what the README says it prints
        env = {**os.environ, "PGCONNECT_TIMEOUT": "20"}
        if shutil.which("psql"):
            done = subprocess.run(["bash", "-c", "\n".join(lines).replace("5433", str(server.port))],
                                  capture_output=True, text=True, timeout=60, env=env)
            assert done.returncode == 0 and "pub" in done.stdout and "secret" not in done.stdout, done.stderr
        code = blocks["python"].replace("5433", str(server.port)).replace("'smollm2-135m'", "'tiny'")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert "['pub']" in done.stdout and "apple" in done.stdout and "plum" not in done.stdout, done.stdout
        assert '"choices"' in done.stdout, done.stdout
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory, privilege_shop):
    """A copy of the privilege matrix's database (conftest.privilege_shop), its users given passwords and an
    administrator ``boss``, served; beside it a copy of the same file for in-process answers."""
    import duckdb_ft

    folder = tmp_path_factory.mktemp("pgwire_matrix")
    db = folder / "shop.duckdb"
    shutil.copyfile(privilege_shop[0], db)
    admin = duckdb_ft.connect(str(db))
    for user in (*PRIVILEGE_USERS, "boss"):
        admin.execute(f"CREATE USER {user} PASSWORD = '{user} password'").fetchall()
    admin.execute("GRANT ROLE admin TO USER boss").fetchall()
    admin.close()
    shutil.copyfile(db, folder / "in_process.duckdb")
    s = WireServer(db)
    s.in_process = str(folder / "in_process.duckdb")
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.log(), s.log()


def outcome(run) -> tuple[str, object, str]:
    """("ok", rows, "") or ("refused", SQLSTATE, message) of ``run()``, in-process or over the wire."""
    from duckdb_ft.server.pgsession import sqlstate

    try:
        return "ok", [tuple(r) for r in run()], ""
    except psycopg.Error as e:
        return "refused", e.sqlstate, str(e)
    except Exception as e:  # noqa: BLE001 - a duckdb-ft error in-process: its SQLSTATE on the wire
        return "refused", sqlstate(e), str(e)


def without_job_ids(answer: tuple[str, object, str]) -> tuple[str, object]:
    """An outcome's kind and rows or SQLSTATE, a new job's id (``ft_<uuid>``, one per side) blanked."""
    kind, value, _ = answer
    if kind == "ok":
        value = [tuple(re.sub(r"^ft_[0-9a-f-]{36}$", "ft_<id>", v) if isinstance(v, str) else v for v in row)
                 for row in value]
    return kind, value


@pytest.mark.slow
def test_the_privilege_matrix_is_answered_over_the_wire_exactly_as_in_process(matrix_server, tiny_model_path):
    """Every case of the privilege matrix (conftest.PRIVILEGE_MATRIX, tests/test_privileges.py's), run by each of
    its users in-process and over psycopg on copies of one database: the same rows or the same refusal (42501,
    duckdb-ft's message), allowed exactly where the matrix allows, and the catalogs alike at the end."""
    import duckdb_ft

    local_admin = duckdb_ft.connect(matrix_server.in_process)
    wire_admin = matrix_server.connect(user="boss", password="boss password", autocommit=True)
    try:
        for index, user in enumerate(PRIVILEGE_USERS):
            local = duckdb_ft.connect(matrix_server.in_process, user=user)
            with matrix_server.connect(user=user, password=f"{user} password", autocommit=True) as wire:
                for action, sql, allowed, message, undo in PRIVILEGE_MATRIX:
                    text = sql.format(u=user, base=tiny_model_path, opts=ONE_EPOCH)
                    here = outcome(lambda: local.execute(text).fetchall())
                    there = outcome(lambda: wire.execute(text).fetchall())
                    case = f"{user}: {action}"
                    assert without_job_ids(there) == without_job_ids(here), case
                    assert (here[0] == "ok") == allowed[index], (case, here)
                    if here[0] == "refused":
                        assert here[1] == "42501" and re.search(message, there[2]), (case, there)
                    elif action.startswith("finetune"):  # each side's job trains to its end
                        assert duckdb_ft.wait(local_admin, here[1][0][0]) == "SUCCESS"
                        assert wire.execute("SELECT finetune('WAIT', %s, 600)", [there[1][0][0]]).fetchone() == (
                            "SUCCESS",)
                    if undo and here[0] == "ok":
                        local_admin.execute(undo).fetchall()
                        wire_admin.execute(undo)
            local.close()
        for table in ("jobs", "models", "grants", "roles", "role_members", "object_owners"):
            count = f"SELECT count(*) FROM duckdb_ft.{table}"
            assert wire_admin.execute(count).fetchone() == local_admin.execute(count).fetchone(), table
    finally:
        wire_admin.close()
        local_admin.close()


def test_values_python_cannot_hold_and_types_postgresql_lacks_never_end_the_connection(server):
    with server.connect(autocommit=True) as con:
        with pytest.raises(psycopg.DataError, match="infinity"):  # sent as PostgreSQL's 'infinity'
            con.execute("SELECT 'infinity'::DATE").fetchall()
        assert con.execute("SELECT 12345678901234567890123::VARINT").fetchone() == ("12345678901234567890123",)
        assert con.execute("SELECT [1, 2]::INTEGER[2], 'a'::ENUM('a', 'b')").fetchone() == ([1, 2], "a")
        assert con.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.slow
def test_serve_says_why_when_the_pg_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([*COMMAND, "serve", str(tmp_path / "x.duckdb"), "--port", str(free_port()),
                               "--pg-port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert "cannot serve the PostgreSQL protocol on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_tls_when_serve_has_a_certificate_and_never_clear_passwords_off_localhost(tmp_path):
    import duckdb_ft

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    db = tmp_path / "tls.duckdb"
    admin = duckdb_ft.connect(str(db))
    admin.execute(f"CREATE USER alice PASSWORD = '{PASSWORD}'")
    admin.close()
    done = subprocess.run([*COMMAND, "serve", str(db), "--host", "0.0.0.0", "--port", str(free_port()),
                           "--pg-port", str(free_port())], capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and "passwords would cross the network in clear" in done.stderr, done.stderr
    port = free_port()  # https on the HTTP port: conftest.Server's plain-http health check does not apply
    server = subprocess.Popen([*COMMAND, "serve", str(db), "--port", str(free_port()), "--pg-port", str(port),
                               "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening():
            assert server.poll() is None, "duckdb-ft serve exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=180, what="the wire port")
        with psycopg.connect(host="127.0.0.1", port=port, user="alice", password=PASSWORD, sslmode="require",
                             autocommit=True) as con:
            assert con.pgconn.ssl_in_use
            assert con.execute("SELECT 41 + %s", [1]).fetchone() == (42,)
    finally:
        server.terminate()
        assert server.wait(120) == 0
