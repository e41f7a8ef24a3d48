"""``duckdb-ft serve DB``'s process: open the database (resuming the jobs that stopped, running the job worker),
serve it with uvicorn until SIGTERM or SIGINT, then stop within ``--grace`` seconds: no new requests (503), answers
in flight finished or cut at the deadline, running jobs checkpointed (resumable), the database closed, exit 0."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from .app import build
from .bounds import MAX_BODY_BYTES, MAX_PROMPT_CHARS, MAX_QUEUE, REQUEST_TIMEOUT, Queue
from .context import State
from .monitoring import Metrics


@dataclass
class Settings:
    """``duckdb-ft serve``'s options."""

    database: str
    host: str = "127.0.0.1"
    port: int = 8000
    grace: float = 10.0
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_queue: int = MAX_QUEUE
    request_timeout: float = REQUEST_TIMEOUT
    pg_port: int | None = None  # the PostgreSQL wire protocol's port (None: off)


class _Server(uvicorn.Server):
    """uvicorn's server, whose SIGTERM/SIGINT begin duckdb-ft's stop and are not raised again once it has stopped
    (uvicorn's own handler re-raises them, which would end the process by the signal instead of exit status 0)."""

    def __init__(self, config: uvicorn.Config, state: State):
        super().__init__(config)
        self.ft = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.ft.stop()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for connections
        self.should_exit = True


def serve(settings: Settings, con: Any) -> int:
    """Serve ``con`` (the administrator's root connection of the database) until a signal stops the server; close
    it; 0, or 1 when the server could not start (the port taken, a TLS file missing)."""
    queue, loops = Queue(settings.max_queue), weakref.WeakSet()
    state = State(con=con, queue=queue, metrics=Metrics(con.session.engine, queue, loops), loops=loops,
                  grace=settings.grace, max_prompt_chars=settings.max_prompt_chars,
                  max_body_bytes=settings.max_body_bytes, request_timeout=settings.request_timeout)
    config = uvicorn.Config(build(state), host=settings.host, port=settings.port, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=int(settings.grace) + 1,
                            ssl_keyfile=settings.ssl_keyfile, ssl_certfile=settings.ssl_certfile,
                            log_config=None, log_level="info")
    server = _Server(config, state)
    wire = _start_wire(settings, con)
    if wire is False:
        con.close()
        return 1
    scheme = "https" if settings.ssl_certfile else "http"
    print(f"duckdb-ft serve: {settings.database} at {scheme}://{settings.host}:{settings.port} "
          "(SIGTERM or Ctrl-C stops it)", file=sys.stderr, flush=True)
    code = 0
    try:
        server.run()
        if not server.started:
            code = 1
    except SystemExit as e:  # uvicorn could not bind the port or read the TLS files: it logged why
        code = int(e.code or 1)
    except OSError as e:
        print(f"Error: cannot serve on {settings.host}:{settings.port}: {e.strerror or e}", file=sys.stderr)
        code = 1
    finally:
        state.stop()
        if wire is not None:
            wire.shutdown()
            wire.server_close()
        cut = state.cut_at() or time.monotonic()
        queue.drain(cut - time.monotonic() + 1.0)  # answers still generating: their own end, or the deadline
        for loop in list(loops):  # what is still decoding fails (Interrupted) and the decode threads stop
            loop.close()
        con.close()  # a running job is checkpointed and left resumable; the database is closed
    print("duckdb-ft serve: stopped; the database is closed.", file=sys.stderr, flush=True)
    if any(t.name.startswith(("duckdb-ft-generation", "duckdb-ft decode")) and t.is_alive()
           for t in threading.enumerate()):
        # An answer cut at the deadline may still be generating on its thread (a model call cannot be stopped
        # midway): leave now, as the interpreter's own exit would tear the model's threads down under it.
        sys.stdout.flush()
        os._exit(code)
    return code


def _start_wire(settings: Settings, con: Any) -> Any:
    """The PostgreSQL wire server beside HTTP when ``--pg-port`` asks for it (None: not asked; False: it could not
    start, and the error is printed)."""
    if settings.pg_port is None:
        return None
    try:
        from . import pgwire
    except ImportError as e:
        print(f"Error: --pg-port needs the pg extra ({e.name} is missing): pip install 'duckdb-ft[pg]'",
              file=sys.stderr)
        return False
    try:
        tls = None
        if settings.ssl_certfile:
            import ssl

            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        wire = pgwire.start(con, settings.host, settings.pg_port, tls)
    except OSError as e:
        print(f"Error: cannot serve the PostgreSQL protocol on {settings.host}:{settings.pg_port}: "
              f"{e.strerror or e}", file=sys.stderr)
        return False
    print(f"duckdb-ft serve: PostgreSQL protocol at {settings.host}:{settings.pg_port}", file=sys.stderr, flush=True)
    return wire
