"""The PostgreSQL wire protocol (version 3) for the served database: psql, psycopg, JDBC, SQLAlchemy, BI tools.

Built on ``buenavista`` (its threaded server, its protocol's message codes and buffers); the handlers of its
``BuenaVistaHandler`` that a served database cannot use as they are are replaced here: its log-in (MD5 against
passwords held in clear) by a cleartext password checked against duckdb-ft's users and tokens; its error response
(no SQLSTATE) by one with severity, SQLSTATE and message; its cancel request (which closed the connection) by an
interrupt of the running statement; its Describe (which ran a statement to learn its columns) by DuckDB's
DESCRIBE; its message loop by one that bounds each message and logs no traceback. ``riffq`` (a Rust core with
pg_catalog emulation) has no wheel for this platform and its source build fetches a git dependency, so it cannot
be installed offline.

Each connection is a :class:`~.pgsession.WireSession` of the user that logged in; statements, parameters, types,
catalog and cancel are that module's, :mod:`.pgtypes`' and :mod:`.pgcatalog`'s. Simple and extended query
protocol; results in text format; rows streamed in batches.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import socketserver
import socket
import struct
import sys
import threading
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from buenavista.postgres import BuenaVistaHandler, BuenaVistaServer, ClientCommand, ServerResponse

from ..errors import AuthenticationFailed
from . import pgcatalog
from .pgsession import Result, WireSession, login, sqlstate
from .pgtypes import decode_parameter

if TYPE_CHECKING:
    from ..surface.engine import Engine

log = logging.getLogger("duckdb_ft.pgwire")

#: The largest message a client may send (a 10 MB query fits); a longer one closes the connection.
MAX_MESSAGE = 64 * 2**20
MAX_CONNECTIONS = 200
#: Bytes of rows gathered before they are written to the socket.
FLUSH_BYTES = 256 * 1024
SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTOCOL_3 = 80877103, 80877104, 80877102, 196608

class ClientGone(Exception):
    """The client closed the connection (or sent less than a message)."""


class ProtocolViolation(Exception):
    """A message the protocol does not allow here: answered with SQLSTATE 08P01, then the connection closes."""


class Handler(BuenaVistaHandler):
    """One client connection: start-up, log-in, then messages until Terminate or a closed socket."""

    server: "PgServer"

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.out = bytearray()
        self.wire: WireSession | None = None
        self.pid, self.skipping = 0, False
        self.statements: dict[str, tuple[str, list[int]]] = {}
        self.portals: dict[str, list] = {}
        try:
            if self.startup():
                self.loop()
        except (ClientGone, OSError):
            pass  # the client left: nothing to answer
        except ProtocolViolation as e:
            self.error("08P01", str(e), fatal=True)
        except Exception as e:  # a bug of ours: the client hears it, the server goes on, no traceback
            log.error("pgwire: connection from %s ended by %s: %s", self.client_address[0], type(e).__name__, e)
            self.error("XX000", f"internal error: {type(e).__name__}: {e}", fatal=True)
        finally:
            self.server.forget(self.pid)
            if self.wire is not None:
                self.wire.close()

    # --------------------------------------------------------------------------------------------- reading

    def read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise ClientGone()
        return data

    def read_length(self) -> int:
        (length,) = struct.unpack("!i", self.read(4))
        if not 4 <= length <= MAX_MESSAGE:
            raise ProtocolViolation(f"invalid message length {length}: a message has 4 to {MAX_MESSAGE} bytes")
        return length - 4

    # --------------------------------------------------------------------------------------------- writing

    def send(self, code: bytes, body: bytes = b"") -> None:
        self.out += code + struct.pack("!i", len(body) + 4) + body
        if len(self.out) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            self.wfile.write(data)

    def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        fields = [b"S" + (b"FATAL" if fatal else b"ERROR"), b"V" + (b"FATAL" if fatal else b"ERROR"),
                  b"C" + code.encode(), b"M" + message.encode("utf-8", "replace")]
        try:
            self.send(ServerResponse.ERROR_RESPONSE, b"\0".join(fields) + b"\0\0")
            self.flush()
        except OSError:
            pass

    def fail(self, e: Exception) -> None:
        """An error of a statement or message: the client is told; in extended mode, skip to Sync."""
        self.error(sqlstate(e), str(e))
        self.skipping = True

    def ready(self) -> None:
        status = self.wire.transaction_status() if self.wire else b"I"
        self.send(ServerResponse.READY_FOR_QUERY, status)
        self.flush()

    # ------------------------------------------------------------------------------------ start-up, log-in

    def startup(self) -> bool:
        while True:
            body = self.read(self.read_length())
            if len(body) < 4:
                raise ProtocolViolation("start-up message too short")
            (code,) = struct.unpack("!i", body[:4])
            if code == SSL_REQUEST and self.server.tls is not None:
                self.wfile.write(b"S")
                self.request = self.server.tls.wrap_socket(self.request, server_side=True)
                self.rfile, self.wfile = self.request.makefile("rb"), socketserver._SocketWriter(self.request)
                continue
            if code in (SSL_REQUEST, GSS_REQUEST):
                self.wfile.write(b"N")  # no TLS: the client goes on in clear (on localhost only) or leaves
                continue
            if code == CANCEL_REQUEST and len(body) == 12:
                pid, key = struct.unpack("!iI", body[4:12])
                self.server.cancel(pid, key)
                return False
            if code != PROTOCOL_3:
                raise ProtocolViolation(f"unsupported protocol {code >> 16}.{code & 0xFFFF}: use protocol 3.0")
            return self.login(body[4:])

    def login(self, body: bytes) -> bool:
        parts = body.split(b"\0")
        params = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in zip(parts[::2], parts[1::2]) if k}
        user = params.get("user", "")
        if not user:
            raise ProtocolViolation("no user name in the start-up message")
        self.send(ServerResponse.AUTHENTICATION_REQUEST, struct.pack("!i", 3))  # cleartext password
        self.flush()
        code = self.read(1)
        body = self.read(self.read_length())
        if code != ClientCommand.PASSWORD_MESSAGE:
            raise ProtocolViolation("expected a password message")
        password = body.rstrip(b"\0").decode("utf-8", "replace")
        try:
            identity = login(self.server.engine, user, password, client=self.client_address[0])
            self.wire = WireSession(self.server.engine, identity, database=params.get("database", user))
        except AuthenticationFailed as e:
            self.error("28P01", str(e), fatal=True)
            return False
        except duckdb.Error as e:  # the user's role is gone since: the one message too
            self.error(sqlstate(e), str(e), fatal=True)
            return False
        self.pid, key = self.server.register(self)
        self.send(ServerResponse.AUTHENTICATION_REQUEST, struct.pack("!i", 0))
        for name, value in pgcatalog.parameters(identity.user).items():
            self.send(ServerResponse.PARAMETER_STATUS, name.encode() + b"\0" + value.encode() + b"\0")
        self.send(ServerResponse.BACKEND_KEY_DATA, struct.pack("!iI", self.pid, key))
        self.ready()
        return True

    # ----------------------------------------------------------------------------------------------- loop

    def loop(self) -> None:
        handlers = {ClientCommand.QUERY: self.query, ClientCommand.PARSE: self.parse, ClientCommand.BIND: self.bind,
                    ClientCommand.DESCRIBE: self.describe, ClientCommand.EXECUTE: self.execute,
                    ClientCommand.CLOSE: self.close}
        while True:
            code = self.rfile.read(1)
            if not code or code == ClientCommand.TERMINATE:
                return
            body = self.read(self.read_length())
            if code == ClientCommand.SYNC:
                self.skipping = False
                self.ready()
            elif code == ClientCommand.FLUSH:
                self.flush()
            elif code in handlers:
                if self.skipping and code != ClientCommand.QUERY:
                    continue  # after an error, the extended protocol discards messages until Sync
                try:
                    handlers[code](body)
                except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
                    raise ProtocolViolation(f"malformed {code.decode(errors='replace')!r} message: {e}") from None
            else:
                raise ProtocolViolation(f"unsupported message type {code!r} (COPY and function calls are not "
                                        "supported)")

    @staticmethod
    def cstring(body: bytes, start: int) -> tuple[str, int]:
        end = body.index(b"\0", start)
        return body[start:end].decode("utf-8"), end + 1

    # ---------------------------------------------------------------------------------------- simple query

    def query(self, body: bytes) -> None:
        sql = body.rstrip(b"\0").decode("utf-8")
        self.skipping = False
        if not sql.strip():
            self.send(ServerResponse.EMPTY_QUERY_RESPONSE)
        else:
            try:
                result = self.wire.run(sql)
            except Exception as e:  # noqa: BLE001 - any failure of a statement is the client's error, not a crash
                self.error(sqlstate(e), str(e) or type(e).__name__)
            else:
                if result.columns:
                    self.row_description_of(result.columns)
                self.rows(result, 0)
        self.ready()

    # -------------------------------------------------------------------------------------- extended query

    def parse(self, body: bytes) -> None:
        name, i = self.cstring(body, 0)
        sql, i = self.cstring(body, i)
        (n,) = struct.unpack("!h", body[i:i + 2])
        oids = list(struct.unpack(f"!{n}I", body[i + 2:i + 2 + 4 * n])) if n > 0 else []
        self.statements[name] = (sql, oids)
        self.send(ServerResponse.PARSE_COMPLETE)

    def bind(self, body: bytes) -> None:
        portal, i = self.cstring(body, 0)
        name, i = self.cstring(body, i)
        if name not in self.statements:
            return self.fail(ValueError(f"prepared statement \"{name}\" does not exist"))
        sql, oids = self.statements[name]
        (nf,) = struct.unpack("!h", body[i:i + 2])
        formats = struct.unpack(f"!{nf}h", body[i + 2:i + 2 + 2 * nf]) if nf > 0 else ()
        i += 2 + 2 * max(nf, 0)
        (n,) = struct.unpack("!h", body[i:i + 2])
        i += 2
        params = []
        try:
            for k in range(n):
                (size,) = struct.unpack("!i", body[i:i + 4])
                data = None if size < 0 else body[i + 4:i + 4 + size]
                if data is not None and len(data) != size:
                    raise struct.error("parameter value shorter than its length")
                i += 4 + max(size, 0)
                binary = (formats[k] if len(formats) > 1 else formats[0] if formats else 0) == 1
                params.append(decode_parameter(data, oids[k] if k < len(oids) else 0, binary))
        except ValueError as e:
            return self.fail(e)
        (nr,) = struct.unpack("!h", body[i:i + 2])
        result_formats = struct.unpack(f"!{nr}h", body[i + 2:i + 2 + 2 * nr]) if nr > 0 else ()
        if any(f != 0 for f in result_formats):
            return self.fail(ValueError("results are sent in text format only: ask for text (format 0)"))
        self.portals[portal] = [sql, params, None]
        self.send(ServerResponse.BIND_COMPLETE)

    def describe(self, body: bytes) -> None:
        kind, name = body[:1], body[1:].rstrip(b"\0").decode("utf-8")
        try:
            if kind == b"S":
                if name not in self.statements:
                    raise ValueError(f"prepared statement \"{name}\" does not exist")
                sql, oids = self.statements[name]
                described = oids + [0] * (_params_in(sql) - len(oids))  # an unspecified type: text
                columns = self.wire.columns(sql, len(described))
                self.send(ServerResponse.PARAMETER_DESCRIPTION,
                          struct.pack(f"!h{len(described)}I", len(described), *[o or 25 for o in described]))
            elif kind == b"P":
                if name not in self.portals:
                    raise ValueError(f"portal \"{name}\" does not exist")
                portal = self.portals[name]
                if portal[2] is None:
                    portal[2] = self.wire.run(portal[0], portal[1])  # Execute sends what this ran
                columns = portal[2].columns
            else:
                raise ProtocolViolation(f"Describe of {kind!r}: expected 'S' or 'P'")
        except ProtocolViolation:
            raise
        except Exception as e:  # noqa: BLE001 - as in query()
            return self.fail(e)
        if columns:
            self.row_description_of(columns)
        else:
            self.send(ServerResponse.NO_DATA)

    def execute(self, body: bytes) -> None:
        name, i = self.cstring(body, 0)
        (limit,) = struct.unpack("!i", body[i:i + 4])
        if name not in self.portals:
            return self.fail(ValueError(f"portal \"{name}\" does not exist"))
        portal = self.portals[name]
        try:
            if portal[2] is None:
                portal[2] = self.wire.run(portal[0], portal[1])
        except ProtocolViolation:
            raise
        except Exception as e:  # noqa: BLE001 - as in query()
            return self.fail(e)
        if not self.rows(portal[2], limit):
            self.send(ServerResponse.PORTAL_SUSPENDED)

    def close(self, body: bytes) -> None:
        kind, name = body[:1], body[1:].rstrip(b"\0").decode("utf-8")
        (self.statements if kind == b"S" else self.portals).pop(name, None)
        self.send(ServerResponse.CLOSE_COMPLETE)

    # ---------------------------------------------------------------------------------------------- results

    def row_description_of(self, columns: list) -> None:
        body = struct.pack("!h", len(columns)) + b"".join(
            name.encode() + b"\0" + struct.pack("!ihihih", 0, 0, t.oid, t.size, -1, 0) for name, t in columns)
        self.send(ServerResponse.ROW_DESCRIPTION, body)

    def rows(self, result: Result, limit: int) -> bool:
        """Send up to ``limit`` rows (0: all) and, when none are left, CommandComplete: whether it was sent."""
        n = len(result.columns)
        sent = 0
        try:
            for row in result.rows:
                parts = [struct.pack("!h", n)]
                for v in row:
                    parts.append(b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v)
                self.send(ServerResponse.DATA_ROW, b"".join(parts))
                result.count += bool(result.columns)
                sent += 1
                if limit and sent >= limit:
                    return False
        except (ArithmeticError, ValueError, TypeError, pa.ArrowException, duckdb.Error) as e:  # a value, not us
            self.fail(ValueError(f"a value of the result cannot be sent: {type(e).__name__}: {e}"))
            result.rows = iter(())
            return True
        self.send(ServerResponse.COMMAND_COMPLETE, result.command().encode() + b"\0")
        return True


def _params_in(sql: str) -> int:
    """The highest ``$n`` placeholder in ``sql``."""
    return max((int(m) for m in re.findall(r"\$(\d+)", sql)), default=0)


class PgServer(BuenaVistaServer):
    """The wire server of one engine: a thread per connection, each connection's cancel key."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine):
        socketserver.ThreadingTCPServer.__init__(self, address, Handler)  # buenavista's takes its own backend
        self.engine = engine
        self.tls: Any = None  # an ssl.SSLContext: TLS for clients that ask (sslmode=require)
        self.connections: dict[int, tuple[Handler, int]] = {}
        self._lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True  # who may connect is decided by the address it listens on (localhost unless asked) and log-in

    def register(self, handler: Handler) -> tuple[int, int]:
        with self._lock:
            if len(self.connections) >= MAX_CONNECTIONS:
                raise ProtocolViolation(f"too many connections (at most {MAX_CONNECTIONS})")
            pid = secrets.randbelow(2**31 - 1) + 1
            while pid in self.connections:
                pid = secrets.randbelow(2**31 - 1) + 1
            key = secrets.randbits(32)
            self.connections[pid] = (handler, key)
            return pid, key

    def forget(self, pid: int) -> None:
        with self._lock:
            self.connections.pop(pid, None)

    def cancel(self, pid: int, key: int) -> None:
        with self._lock:
            found = self.connections.get(pid)
        if found and hmac.compare_digest(struct.pack("!I", found[1]), struct.pack("!I", key)) and found[0].wire:
            found[0].wire.cancel()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.error("pgwire: connection from %s failed: %s", client_address[0], sys.exc_info()[1])


def start(con: Any, host: str = "127.0.0.1", port: int = 5433, tls: Any = None) -> PgServer:
    """Serve the database of ``con`` (a duckdb-ft Connection of its administrator) over the PostgreSQL protocol
    on ``host:port`` from a background thread; ``shutdown()`` the returned server to stop it. Passwords travel in
    clear inside the protocol: without ``tls`` (an ``ssl.SSLContext``) it listens on a loopback address only.

    Raises:
        OSError: the port is taken, or ``host`` is not a loopback address and there is no ``tls``.
    """
    if tls is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise OSError(f"passwords would cross the network in clear: serve TLS (--ssl-keyfile and --ssl-certfile) "
                      f"to listen on {host}")
    server = PgServer((host, port), con.session.engine)
    server.tls = tls
    threading.Thread(target=server.serve_forever, name="duckdb-ft-pgwire", daemon=True).start()
    return server
