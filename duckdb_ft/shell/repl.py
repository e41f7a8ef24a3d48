"""The ``duckdb-ft`` shell: DuckDB's shell habits over a duckdb-ft connection.

UI only: every statement goes through :func:`duckdb_ft.execute`, its result is rendered by :mod:`.render`,
and a job is watched by :mod:`.progress`. Statements end with ``;`` and may span lines; lines starting with
``.`` are dot commands. A statement runs on a worker thread so that Ctrl-C (in the main thread) can interrupt it
with ``con.interrupt()`` and the shell stays.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable, TextIO

import duckdb

from ..errors import FtError, from_duckdb, udf_error
from ..surface.connection import execute
from ..surface.redact import mask_secrets
from . import progress, render, sqltext
from .commands import COMMANDS, CommandError, Quit, find

PROMPT = "D "
CONTINUATION = "‣ "
BATCH_ROWS = 2048
DEFAULT_HISTORY = "~/.duckdb_ft_history"
_DUCKDB_ERROR = re.compile(r"([A-Z][A-Za-z ]*Error): (.*)", re.S)


def error_message(e: BaseException) -> str:
    """One clear message for an error, never a traceback.

    duckdb-ft's own errors (those DuckDB reports from inside a UDF included, see :func:`duckdb_ft.errors.from_duckdb`)
    are shown as "Error: <message>". DuckDB's errors are shown as DuckDB's shell shows them: the kind of error on a
    line, then the message.
    """
    ours = e if isinstance(e, FtError) else from_duckdb(e)
    if ours is not None or isinstance(e, CommandError):
        return f"Error: {str(ours if ours is not None else e).strip()}"
    text = str(e).strip()
    foreign = udf_error(e)
    if foreign:  # a bug's exception inside a UDF (not one of ours): its class says most
        return f"Error: {foreign[0]}: {foreign[1]}"
    if isinstance(e, duckdb.Error):
        m = _DUCKDB_ERROR.match(text)
        return f"{m.group(1)}:\n{m.group(2)}" if m else f"Error: {text}"
    return f"Error: {type(e).__name__}: {text}"


def history_store(path: str) -> Any:
    """The interactive shell's history: the file ``path`` (in memory when it cannot be written), each entry
    stored with its passwords masked (``CREATE USER u PASSWORD = '***'``)."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    class Masked:
        def append_string(self, string: str) -> None:
            super().append_string(mask_secrets(string))  # type: ignore[misc]

    try:
        open(path, "a").close()
        return type("MaskedFileHistory", (Masked, FileHistory), {})(path)
    except OSError:
        return type("MaskedHistory", (Masked, InMemoryHistory), {})()


def _interrupted(e: BaseException) -> bool:
    """DuckDB's own interrupt (Ctrl-C of a query): not an FtError such as an interrupted WAIT, which says more."""
    return isinstance(e, duckdb.InterruptException) and not isinstance(e, FtError)


def own_ctrl_c() -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt in this process, whatever the parent left: a process started with
    SIGINT ignored (a script's background job, a runner that ignores it) or blocked would otherwise never stop a
    running statement, although the terminal echoes ^C. For the interactive shell only; from the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _EvaluationProgress:
    """While a statement runs an EVALUATE: its progress on stderr, a live line in a terminal, else a plain line
    when the model changes and at most every 5 s."""

    def __init__(self, err: TextIO, session_id: str | None):
        self.err, self.session_id = err, session_id
        self.live = hasattr(err, "isatty") and err.isatty()
        self.last, self.last_at, self.drawn = "", 0.0, False
        self.began = time.monotonic()  # nothing for a statement done within 2 s: a script's short EVALUATE

    def update(self) -> None:
        line = progress.evaluation_line(self.session_id) if self.session_id else None
        if not line or line == self.last:
            return
        now = time.monotonic()
        if now - self.began < 2.0:
            return
        if self.live:
            self.err.write("\r" + line[:shutil.get_terminal_size().columns - 1] + "\x1b[K")
            self.drawn = True
        elif now - self.last_at >= progress.PLAIN_EVERY_S or line.split("  ")[3] != (self.last.split("  ") + [""] * 4)[3]:
            self.err.write(line + "\n")
            self.last_at = now
        else:
            return
        self.err.flush()
        self.last = line

    def close(self) -> None:
        if self.drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()


class Shell:
    """One shell session on one connection."""

    def __init__(self, con: Any, *, out: TextIO | None = None, err: TextIO | None = None, mode: str = "box"):
        self.con = con
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.mode = mode
        self.timer = False
        self.interrupted = False  # set when Ctrl-C stopped something; a script then stops

    # ------------------------------------------------------------------------------------------ statements

    def run_sql(self, sql: str) -> bool:
        """Run one statement and print its result, or its error; True when it succeeded."""
        start, times = time.perf_counter(), os.times()
        try:
            self._interruptible(lambda: self._execute(sql))
            ok = True
        except KeyboardInterrupt:
            ok, self.interrupted = False, True
            self.error("Interrupted.")
        except BrokenPipeError:
            raise  # the reader left (`duckdb-ft ... | head`): nothing more to say
        except Exception as e:  # noqa: BLE001 - every failure is reported, none is a traceback
            ok = False
            if _interrupted(e):
                self.interrupted = True
                self.error("Interrupted.")
            else:
                self.error(error_message(e))
        if self.timer:
            now = os.times()
            self.print(f"Run Time (s): real {time.perf_counter() - start:.3f} user {now.user - times.user:f} "
                       f"sys {now.system - times.system:f}")
        return ok

    def _execute(self, sql: str) -> None:
        rel = self.con.sql(sql) if getattr(self.con, "remote", False) else execute(self.con, sql)
        if rel is None:
            return
        columns = list(rel.columns)
        # DuckDB's shell prints no row counts of CREATE / INSERT / UPDATE ..., nor SET's "Success".
        if getattr(rel, "type", "") == "MATERIALIZED_RELATION" and columns in (["Count"], ["Success"]):
            return
        types = [str(t) for t in rel.types]
        # Each value as DuckDB writes it (its own VARCHAR cast), read in batches: one execution, any size.
        text = rel.project(", ".join(f"#{i + 1}::VARCHAR" for i in range(len(columns))))
        rows = (row for batch in text.to_arrow_reader(BATCH_ROWS)
                for row in zip(*(col.to_pylist() for col in batch.columns)))
        if columns == ["explain_key", "explain_value"]:
            for _, plan in rows:
                self.out.write(f"{plan}\n")
            return
        render.MODES[self.mode](self.out, columns, types, rows, max_width=self.width())
        self.out.flush()

    def _interruptible(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a worker thread; Ctrl-C interrupts the connection and waits for the statement to stop."""
        done, box = threading.Event(), {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="duckdb-ft-statement", daemon=True).start()
        interrupted, hinted = 0.0, False
        shown = _EvaluationProgress(self.err, getattr(getattr(self.con, "session", None), "id", None))
        while not done.is_set():
            try:
                done.wait(0.1)
                shown.update()
            except KeyboardInterrupt:
                interrupted = interrupted or time.monotonic()
                self.con.interrupt()
            if interrupted and not hinted and time.monotonic() - interrupted > 2.0:
                # DuckDB stops a statement between chunks: one busy inside a function runs until it returns.
                self.error("Interrupting: the statement stops when the function it is running returns.")
                hinted = True
        shown.close()
        if interrupted:  # whatever the statement ended with, Ctrl-C stopped it
            raise KeyboardInterrupt
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # ----------------------------------------------------------------------------------------------- input

    def run_script(self, lines: Iterable[str], *, bail: bool = False) -> bool:
        """Run statements and dot commands read line by line; True when all succeeded.

        ``bail``: stop at the first error (``-bail``, ``-c``, ``.read``); otherwise go on, as ``duckdb`` does with
        a script on standard input. Ctrl-C always stops a script.
        """
        ok, buffer = True, ""
        try:
            for line in lines:
                if not sqltext.has_code(buffer) and line.lstrip().startswith("."):
                    buffer = ""
                    good = self.run_command(line.strip())
                else:
                    buffer += line if line.endswith("\n") else line + "\n"
                    statements, buffer = sqltext.split(buffer)
                    good = True
                    for sql in statements:
                        if not self.run_sql(sql):
                            good = False
                            if bail or self.interrupted:
                                break
                ok = ok and good
                if (not good and bail) or self.interrupted:
                    return False
            if sqltext.has_code(buffer):  # a last statement without its semicolon runs too
                ok = self.run_sql(buffer.strip()) and ok
        except KeyboardInterrupt:
            self.interrupted = True
            self.error("Interrupted.")
            return False
        return ok

    def run_command(self, line: str) -> bool:
        """Run one dot command; True when it succeeded."""

        try:
            args = shlex.split(line[1:])
        except ValueError as e:
            self.error(f"Error: {e} in {line!r}")
            return False
        if not args:
            return True
        try:
            command = find(args[0])
            return COMMANDS[command](self, args[1:]) is not False
        except (Quit, BrokenPipeError):
            raise
        except KeyboardInterrupt:
            self.interrupted = True
            self.error("Interrupted.")
            return False
        except Exception as e:  # noqa: BLE001 - one message, no traceback
            self.error(error_message(e))
            return False

    # ---------------------------------------------------------------------------------------------- output

    def width(self) -> int:
        return shutil.get_terminal_size((120, 24)).columns

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.out.flush()
        color = getattr(self.err, "isatty", lambda: False)() and not os.environ.get("NO_COLOR")
        self.err.write(f"\x1b[31m{text}\x1b[0m\n" if color else text + "\n")
        self.err.flush()

    # ------------------------------------------------------------------------------------------ interactive

    def repl(self, history: str | None = None) -> int:
        """The interactive loop: line editing, history, multi-line statements; Ctrl-D or ``.quit`` leaves."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.lexers import PygmentsLexer
        from pygments.lexers.sql import SqlLexer

        own_ctrl_c()
        store = history_store(os.path.expanduser(history or os.environ.get("DUCKDB_FT_HISTORY") or DEFAULT_HISTORY))
        keys = KeyBindings()

        @keys.add("enter")
        @keys.add("c-j")
        def _(event: Any) -> None:
            buf = event.current_buffer
            text = buf.text
            if not text.strip() or text.lstrip().startswith(".") or sqltext.is_complete(text):
                buf.validate_and_handle()
            else:
                buf.insert_text("\n")

        session: Any = PromptSession(
            history=store, multiline=True, key_bindings=keys, lexer=PygmentsLexer(SqlLexer),
            prompt_continuation=lambda width, line, soft: " " * width if soft else CONTINUATION.rjust(width))
        while True:
            try:
                text = session.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            try:
                self.interrupted = False
                self.run_script(text.splitlines(keepends=True) or [""])
            except Quit as q:
                return q.code
