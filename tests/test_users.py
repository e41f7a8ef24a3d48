"""Users, passwords and programmatic access tokens: the statements, who may run them, authentication with one
error for every failure, the back-off of failed attempts, secrets never stored or shown, and ``duckdb-ft token``."""

from __future__ import annotations

import subprocess
import time

import duckdb
import pytest
from conftest import COMMAND, denied, one, rows, user_connection

import duckdb_ft
from duckdb_ft import cli
from duckdb_ft.errors import AuthenticationFailed
from duckdb_ft.governance import credentials
from duckdb_ft.governance.credentials import Backoff, Identity, authenticate_password, authenticate_token
from duckdb_ft.surface.connection import Connection
from duckdb_ft.surface.functions import install

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """A back-off of this test's own (no failure of another test slows it), and cheaper scrypt (the stored
    parameters travel with each hash, so verification follows them)."""
    monkeypatch.setattr(credentials, "BACKOFF", Backoff(base=0.001, cap=0.002))
    monkeypatch.setattr(credentials, "SCRYPT_N", 2**10)


@pytest.fixture
def admin():
    """An administrator with role viewer and analyst, user alice (password, granted viewer and analyst, default
    role analyst) and user bob (granted viewer)."""
    con = duckdb_ft.connect()
    for sql in ("CREATE ROLE viewer", "CREATE ROLE analyst",
                f"CREATE USER alice PASSWORD = '{PASSWORD}' DEFAULT_ROLE = analyst",
                "CREATE USER bob PASSWORD = 'bobs password'", "GRANT ROLE viewer TO USER alice",
                "GRANT ROLE analyst TO USER alice", "GRANT ROLE viewer TO USER bob"):
        con.execute(sql)
    yield con
    con.close()


def cursor(con):
    return con.session.engine.cursor()


def token(con, user, name, extra=""):
    """ALTER USER ... ADD PROGRAMMATIC ACCESS TOKEN: the secret of its one row."""
    (row,) = rows(con, f"ALTER USER {user} ADD PROGRAMMATIC ACCESS TOKEN {name} {extra}")
    return row[1]


def session_of(admin, identity: Identity) -> Connection:
    """A connection of the session a door opens for an authenticated identity."""
    raw = admin.duckdb_connection.cursor()
    return Connection(raw, install(raw, user=identity.user, role=identity.role))


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(AuthenticationFailed) as e:
        call(*args, **kwargs)
    return str(e.value)


# ------------------------------------------------------------------------------------------------- statements


def test_user_statements_round_trip(admin):
    assert rows(admin, "SHOW USERS") == [("alice", "analyst", True, rows(admin, "SHOW USERS")[0][3]),
                                         ("bob", None, True, rows(admin, "SHOW USERS")[1][3])]
    assert [d[0] for d in admin.execute("SHOW USERS").description] == ["name", "default_role", "has_password",
                                                                        "created_on"]
    admin.execute("CREATE USER IF NOT EXISTS alice")  # no error, nothing changed
    with pytest.raises(duckdb_ft.AlreadyExists):
        admin.execute("CREATE USER alice")
    admin.execute("CREATE USER carol")
    assert rows(admin, "SHOW USERS")[2][:3] == ("carol", None, False)
    refused(authenticate_password, cursor(admin), "carol", "")  # no password: no login

    admin.execute("ALTER USER alice SET DEFAULT_ROLE = viewer")
    assert one(admin, "SELECT default_role FROM duckdb_ft.users WHERE name = 'alice'") == "viewer"
    assert user_connection(admin, "alice").session.role == "viewer"
    admin.execute("ALTER USER alice UNSET DEFAULT_ROLE")
    assert user_connection(admin, "alice").session.role == "viewer"  # the first granted role, as before users
    admin.execute("ALTER USER alice SET PASSWORD = 'a new password'")
    refused(authenticate_password, cursor(admin), "alice", PASSWORD)
    assert authenticate_password(cursor(admin), "alice", "a new password") == Identity("alice", None)

    secret = token(admin, "alice", "app1", "ROLE_RESTRICTION = 'viewer' DAYS_TO_EXPIRY = 30")
    (shown,) = rows(admin, "SHOW USER PROGRAMMATIC ACCESS TOKENS FOR USER alice")
    assert shown[:3] == ("app1", "alice", "viewer") and shown[5] == "ACTIVE"
    assert 29.9 < (shown[3] - shown[4]).total_seconds() / 86400 < 30.1
    assert rows(admin, "SHOW USER PATS FOR USER alice") == [shown]
    admin.execute("DROP USER alice")  # its tokens and its grants go with it
    assert rows(admin, "SELECT count(*) FROM duckdb_ft.user_tokens") == [(0,)]
    assert rows(admin, "SHOW GRANTS TO USER alice") == []
    refused(authenticate_token, cursor(admin), secret)
    admin.execute("DROP USER IF EXISTS alice")
    with pytest.raises(duckdb_ft.NotFound, match="user 'alice' does not exist"):
        admin.execute("DROP USER alice")
    with pytest.raises(duckdb_ft.NotFound, match="role 'nobody' does not exist"):
        admin.execute("CREATE USER dave DEFAULT_ROLE = nobody")


def test_bad_user_statements_say_what_is_wrong_and_change_nothing(admin):
    before = rows(admin, "SELECT * FROM duckdb_ft.users ORDER BY name")
    for sql, match in [("CREATE USER dave PASSWORD = 'short'", "8 to 1024 characters"),
                       (f"CREATE USER dave PASSWORD = '{'x' * 1025}'", "8 to 1024 characters"),
                       ("CREATE USER dave PASSWORD = 'long enough' COLOR = 'red'", "COLOR is not a property"),
                       ("CREATE USER dave PASSWORD = 12345678", "PASSWORD takes a quoted string"),
                       ("ALTER USER alice FLY", "expected SET, UNSET, ADD"),
                       ("ALTER USER alice ADD PROGRAMMATIC ACCESS TOKEN t DAYS_TO_EXPIRY = 366", "from 1 to 365"),
                       ("ALTER USER alice ADD PAT t ROLE_RESTRICTION = 'nobody'", "role 'nobody' does not exist"),
                       ("ALTER USER bob ADD PAT t ROLE_RESTRICTION = analyst", "not granted to user bob")]:
        with pytest.raises(duckdb_ft.InvalidArgument if "nobody" not in sql else duckdb_ft.FtError, match=match):
            admin.execute(sql)
    assert rows(admin, "SELECT * FROM duckdb_ft.users ORDER BY name") == before
    assert rows(admin, "SELECT count(*) FROM duckdb_ft.user_tokens") == [(0,)]


def test_only_the_administrator_creates_alters_drops_and_lists_users(admin):
    alice = user_connection(admin, "alice")
    before = rows(admin, "SELECT * FROM duckdb_ft.users ORDER BY name")
    for sql in ("CREATE USER eve PASSWORD = 'long enough'", "DROP USER bob", "SHOW USERS",
                "ALTER USER alice SET DEFAULT_ROLE = viewer", "GRANT ROLE analyst TO USER bob"):
        denied(alice, sql, match="for the administrator only")
    assert rows(admin, "SELECT * FROM duckdb_ft.users ORDER BY name") == before


def test_a_user_reads_no_hash_and_takes_no_default_role_it_was_not_granted(admin):
    admin.execute("CREATE USER frank PASSWORD = 'franks password' DEFAULT_ROLE = analyst")
    frank = user_connection(admin, "frank")
    assert frank.session.role == "public"  # DEFAULT_ROLE names a role, it grants nothing
    for table in ("users", "user_tokens"):
        denied(frank, f"SELECT * FROM duckdb_ft.{table}", match="duckdb-ft catalog is reached only through")
    admin.execute("GRANT ROLE analyst TO USER frank")
    assert user_connection(admin, "frank").session.role == "analyst"


def test_a_user_changes_its_own_password_but_not_another_users(admin):
    alice = user_connection(admin, "alice")
    alice.execute("ALTER USER alice SET PASSWORD = 'alices new one'")
    assert authenticate_password(cursor(admin), "alice", "alices new one").user == "alice"
    with pytest.raises(duckdb_ft.PermissionDenied) as other:
        alice.execute("ALTER USER bob SET PASSWORD = 'hijacked!!'")
    with pytest.raises(duckdb_ft.PermissionDenied) as ghost:  # no telling whether a user exists
        alice.execute("ALTER USER ghost SET PASSWORD = 'hijacked!!'")
    assert str(other.value) == str(ghost.value)
    assert authenticate_password(cursor(admin), "bob", "bobs password").user == "bob"


def test_a_user_manages_its_own_tokens_and_no_one_elses(admin):
    alice = user_connection(admin, "alice")
    secret = token(alice, "alice", "mine")
    assert authenticate_token(cursor(admin), secret) == Identity("alice", None)
    secret2 = rows(alice, "ALTER USER ADD PAT second")[0][1]  # no name: the session's own user
    assert [r[0] for r in rows(alice, "SHOW USER PROGRAMMATIC ACCESS TOKENS")] == ["mine", "second"]
    for sql in ("ALTER USER bob ADD PAT hers", "ALTER USER bob REMOVE PAT x",
                "SHOW USER PROGRAMMATIC ACCESS TOKENS FOR USER bob"):
        denied(alice, sql, match="for the administrator only")
    with pytest.raises(duckdb_ft.InvalidArgument, match="role 'admin' is not granted to user alice"):
        alice.execute("ALTER USER alice ADD PAT root ROLE_RESTRICTION = 'admin'")  # no token above the user
    alice.execute("ALTER USER alice REMOVE PROGRAMMATIC ACCESS TOKEN mine")
    refused(authenticate_token, cursor(admin), secret)  # removed: refused at once
    assert authenticate_token(cursor(admin), secret2).user == "alice"
    with pytest.raises(duckdb_ft.NotFound, match="no programmatic access token named 'mine'"):
        alice.execute("ALTER USER alice REMOVE PAT mine")


# ------------------------------------------------------------------------------------------------ authentication


def test_a_token_session_is_held_to_its_role_restriction(admin):
    secret = token(admin, "alice", "v", "ROLE_RESTRICTION = 'VIEWER'")  # a string folds as a name does
    restricted = session_of(admin, authenticate_token(cursor(admin), secret))
    assert (restricted.session.user, restricted.session.role) == ("alice", "viewer")
    denied(restricted, "USE ROLE analyst", match="restricted to role viewer")
    assert restricted.cursor().session.role_restriction == "viewer"
    # what the session could not do, no token it makes can: a password change or a token of another role
    denied(restricted, "ALTER USER alice SET PASSWORD = 'takeover!!'", match="cannot change the password")
    denied(restricted, "ALTER USER alice ADD PAT wider ROLE_RESTRICTION = 'analyst'", match="restricted to role")
    narrow = token(restricted, "alice", "same")
    assert authenticate_token(cursor(admin), narrow) == Identity("alice", "viewer")

    full = session_of(admin, authenticate_token(cursor(admin), token(admin, "alice", "full")))
    assert full.session.role == "analyst" and full.session.role_restriction is None  # the DEFAULT_ROLE
    with pytest.raises(duckdb_ft.PermissionDenied, match="not granted to user bob"):
        session_of(admin, Identity("bob", "analyst"))


def test_every_authentication_failure_has_one_message(admin):
    cur = cursor(admin)
    good = token(admin, "alice", "good")
    expired, removed = token(admin, "alice", "old"), token(admin, "alice", "gone")
    revoked = token(admin, "alice", "rv", "ROLE_RESTRICTION = 'analyst'")
    admin.execute("UPDATE duckdb_ft.user_tokens SET expires_at = epoch_ms(now()::TIMESTAMP) - 1 WHERE name = 'old'")
    admin.execute("ALTER USER alice REMOVE PAT gone")
    admin.execute("REVOKE ROLE analyst FROM USER alice")
    token_id, secret = good[4:20], good[21:]
    other_id = token(admin, "bob", "b")[4:20]
    failures = {
        "wrong secret": (authenticate_token, cur, f"dft_{token_id}_{'x' * len(secret)}"),
        "another token's id": (authenticate_token, cur, f"dft_{other_id}_{secret}"),
        "unknown id": (authenticate_token, cur, f"dft_{'0' * 16}_{secret}"),
        "malformed": (authenticate_token, cur, "Bearer nonsense"),
        "not text": (authenticate_token, cur, None),
        "expired": (authenticate_token, cur, expired),
        "removed": (authenticate_token, cur, removed),
        "revoked role restriction": (authenticate_token, cur, revoked),
        "wrong password": (authenticate_password, cur, "alice", "wrong password"),
        "unknown user": (authenticate_password, cur, "mallory", PASSWORD),
        "empty password": (authenticate_password, cur, "alice", ""),
        "a password too long to hash": (authenticate_password, cur, "alice", PASSWORD + " " * 2000),
    }
    messages = {what: refused(call, *args) for what, (call, *args) in failures.items()}
    assert set(messages.values()) == {AuthenticationFailed.MESSAGE}, messages
    assert isinstance(AuthenticationFailed(), duckdb.PermissionException)
    assert authenticate_token(cur, good) == Identity("alice", None)
    assert authenticate_password(cur, "alice", PASSWORD) == Identity("alice", None)


def test_failed_logins_back_off_per_user_and_per_client(admin, monkeypatch):
    backoff = Backoff(base=0.15, cap=1.0)
    monkeypatch.setattr(credentials, "BACKOFF", backoff)
    cur = cursor(admin)

    def attempt(user="alice", client="10.0.0.1"):
        start = time.perf_counter()
        refused(authenticate_password, cur, user, "wrong password", client=client)
        return time.perf_counter() - start

    first = [attempt() for _ in range(4)]
    assert first[3] > first[0] + 0.5, first  # 0.15 * 2**2 s before the 4th check, none before the 1st
    assert backoff.delay("alice", "10.0.0.9") == pytest.approx(1.0)  # the user's failures, from anywhere
    assert backoff.delay("bob", "10.0.0.1") == pytest.approx(1.0)  # the client's, for any user
    assert backoff.delay("bob", "10.0.0.9") == 0
    assert backoff.delay("mallory", "10.0.0.1") == backoff.delay("bob", "10.0.0.1")  # unknown users alike
    authenticate_password(cur, "alice", PASSWORD, client="10.0.0.9")  # success resets the user, not the client
    assert backoff.delay("alice", "10.0.0.9") == 0 and backoff.failures("x", "10.0.0.1") == 4


def test_the_backoff_forgets_old_failures_and_keeps_a_bounded_number_of_keys():
    now = [0.0]
    backoff = Backoff(base=1, cap=8, size=10, window=60, clock=lambda: now[0])
    for k in range(100):
        backoff.failed(f"user{k}", f"client{k}")
    assert len(backoff._failures) == 10
    assert backoff.failures("user99", "client99") == 1 and backoff.failures("user0", "client0") == 0
    now[0] = 61
    assert backoff.delay("user99", "client99") == 0
    for _ in range(6):
        backoff.failed("user99")
    assert backoff.delay("user99") == 8  # capped


def test_a_token_is_hashed_with_scrypt_once_then_its_row_is_still_read_each_time(admin, monkeypatch):
    calls = []
    verify = credentials.verify_secret
    monkeypatch.setattr(credentials, "verify_secret", lambda *a: calls.append(1) or verify(*a))
    secret = token(admin, "alice", "app")
    for _ in range(3):
        assert authenticate_token(cursor(admin), secret).user == "alice"
    assert len(calls) == 1  # the server's per-request check costs one catalog read, not 30-90 ms of scrypt
    refused(authenticate_token, cursor(admin), secret[:-4] + "AAAA")  # a wrong secret is hashed: no shortcut
    assert len(calls) == 2
    admin.execute("ALTER USER alice REMOVE PAT app")
    admin.execute("ALTER USER alice ADD PAT app")  # the same name again: another token, another hash
    refused(authenticate_token, cursor(admin), secret)
    monkeypatch.setattr(credentials, "MAX_VERIFIED", 2)
    for k in range(3):
        authenticate_token(cursor(admin), token(admin, "bob", f"b{k}"))
    assert len(credentials._VERIFIED) == 2


# ---------------------------------------------------------------------------------------------------- secrets


def test_secrets_are_stored_only_as_salted_scrypt_hashes(admin, monkeypatch):
    monkeypatch.setattr(credentials, "SCRYPT_N", 2**14)
    admin.execute("CREATE USER erin PASSWORD = 'erins password'")
    secret = token(admin, "erin", "t1")
    assert secret.startswith("dft_") and token(admin, "erin", "t2") != secret
    hashes = [r[0] for r in rows(admin, "SELECT password_hash FROM duckdb_ft.users WHERE name = 'erin' UNION ALL "
                                        "SELECT secret_hash FROM duckdb_ft.user_tokens")]
    assert all(h.startswith("scrypt$16384$8$1$") for h in hashes) and len(set(h.split("$")[4] for h in hashes)) == 3
    text = ""
    for (table,) in rows(admin, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'duckdb_ft'"):
        text += repr(rows(admin, f"SELECT * FROM duckdb_ft.{table}"))
    for clear in (secret, secret[21:], "erins password", PASSWORD):
        assert clear not in text
    assert "token_secret" not in [d[0] for d in admin.execute("SHOW USER PATS FOR USER erin").description]


def test_passwords_never_appear_in_errors_reprs_or_the_shell_history(admin, tmp_path):
    from duckdb_ft.shell.repl import history_store
    from duckdb_ft.surface.statements import parse_ft_statement

    secret = "Hunter2-secret"
    for sql in (f"CREATE USER x PASSWORD = '{secret}' COLOR = 1", f'CREATE USER x PASSWORD = "{secret}"',
                f"CREATE USER x PASSWORD '{secret}'", f"ALTER USER alice SET PASSWORD = '{secret}' FLY",
                f"CREATE USER x PASSWORD = '{secret}", f"EXPLAIN CREATE USER x PASSWORD = '{secret}'",
                f"CREATE USER x PASSWORD = 'part one' '{secret}'"):
        with pytest.raises(duckdb.Error) as e:
            admin.execute(sql)
        assert secret not in str(e.value), str(e.value)
    from duckdb_ft.surface.redact import mask_secrets

    assert mask_secrets("SELECT password FROM logins") == "SELECT password FROM logins"  # a column stays
    st = parse_ft_statement(f"CREATE USER x PASSWORD = '{secret}'")
    assert st.password == secret and secret not in repr(st)
    store = history_store(str(tmp_path / "history"))
    store.append_string(f"CREATE USER x PASSWORD = '{secret}' DEFAULT_ROLE = viewer;\nSELECT 'kept';")
    saved = (tmp_path / "history").read_text()
    assert secret not in saved and "'kept'" in saved and "DEFAULT_ROLE = viewer" in saved
    assert secret not in "".join(store.get_strings())


# ------------------------------------------------------------------------------------------------------ the CLI


def test_token_command_prints_a_token_that_authenticates_as_the_administrator(tmp_path, capsys):
    db = str(tmp_path / "served.duckdb")
    done = subprocess.run(COMMAND + ["token", db, "--days", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert done.stdout == secret + "\n" and secret.startswith("dft_") and "Traceback" not in done.stderr
    with duckdb.connect(db) as held:  # while another process holds the file: one clear error
        failed = subprocess.run(COMMAND + ["token", db], capture_output=True, text=True, timeout=120)
        assert held.execute("SELECT count(*) FROM duckdb_ft.user_tokens").fetchall() == [(1,)]
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.startswith("Error: database file") and "Traceback" not in failed.stderr
    assert cli.main(["token", db, "--user", "nobody"]) == 2
    assert capsys.readouterr().err.startswith("Error: user 'nobody' does not exist")
    assert cli.main(["token", db, "--days", "366"]) == 2
    assert capsys.readouterr().err.startswith("Error: DAYS_TO_EXPIRY must be a whole number of days from 1 to 365")
    with pytest.raises(SystemExit) as usage:
        cli.main(["token", db, "--days", "soon"])
    assert usage.value.code == 2 and "Error: argument --days: invalid int value: 'soon'" in capsys.readouterr().err
    con = duckdb_ft.connect(db)
    identity = authenticate_token(cursor(con), secret)
    assert identity == Identity("admin", None)
    session = session_of(con, identity).session
    assert session.is_admin and session.user == "admin"
    con.close()


def test_a_users_read_only_session_is_held_to_the_users_grants(tmp_path):
    """Opening the file read-only is no way round the grants: the user's session sees what the user was granted,
    exactly as read-write (it used to be opened as the administrator); a file with no duckdb-ft users refuses a
    named user instead of opening it as the administrator."""
    path = str(tmp_path / "shop.duckdb")
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE TABLE pub AS SELECT 1 AS x")
    admin.execute("CREATE TABLE secret AS SELECT 42 AS x")
    admin.execute("CREATE USER bob")
    admin.execute("CREATE ROLE reader")
    admin.execute("GRANT USAGE ON SCHEMA main TO ROLE reader")
    admin.execute("GRANT SELECT ON TABLE pub TO ROLE reader")
    admin.execute("GRANT ROLE reader TO USER bob")
    admin.close()
    for read_only in (False, True):
        bob = duckdb_ft.connect(path, user="bob", read_only=read_only)
        assert bob.execute("SELECT x FROM pub").fetchall() == [(1,)]
        denied(bob, "SELECT x FROM secret")
        denied(bob, "SELECT * FROM duckdb_ft.users")
        bob.close()
    ro = duckdb_ft.connect(path, read_only=True)  # no user: the administrator, as read-write
    assert ro.execute("SELECT x FROM secret").fetchall() == [(42,)]
    ro.close()

    plain = str(tmp_path / "plain.duckdb")
    duckdb.connect(plain).execute("CREATE TABLE secret AS SELECT 42 AS x").close()
    with pytest.raises(duckdb_ft.NotFound, match="user 'bob' does not exist"):
        duckdb_ft.connect(plain, user="bob", read_only=True)
