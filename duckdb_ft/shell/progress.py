"""Watching a fine-tuning job: a live progress bar in a terminal, plain lines otherwise.

The job's state is read through SQL, as any client would: ``FROM finetune('DESCRIBE', id)`` for its status and
step, ``finetune_history(id)`` for losses, tokens and times. Nothing here changes the job; Ctrl-C stops watching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TextIO

DONE = ("SUCCESS", "ERROR", "CANCELLED")
PLAIN_EVERY_S = 5.0  # plain output: a line when the status changes, else at most one this often


@dataclass
class State:
    """What is known of a job at one moment."""

    id: str
    status: str
    model: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    validation_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    error: str | None = None

    def line(self) -> str:
        """The state in one plain line."""
        parts = [self.id, self.status]
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        parts += _figures(self)
        if self.status == "SUCCESS":
            parts.append(f"model {self.model}")
        if self.error:
            parts.append(f"error: {self.error}")
        return "  ".join(parts)


def _figures(s: State) -> list[str]:
    out = []
    if s.loss is not None:
        out.append(f"loss {s.loss:.4f}")
    if s.validation_loss is not None:
        out.append(f"val_loss {s.validation_loss:.4f}")
    if s.tokens_per_s is not None:
        out.append(f"{s.tokens_per_s:,.0f} tok/s")
    if s.eta_s is not None and s.status == "IN_PROGRESS":
        out.append(f"ETA {_clock(s.eta_s)}")
    return out


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def running_jobs(con: Any) -> list[str]:
    """The jobs PENDING or IN_PROGRESS (in this process: one that died is marked ERROR when the file is opened)."""
    rows = con.execute("SELECT id FROM finetune('SHOW') WHERE status IN ('PENDING', 'IN_PROGRESS') "
                       "ORDER BY created_on").fetchall()
    return [r[0] for r in rows]


class Reader:
    """Reads a job's state; the history a step at a time, so each poll reads only the new steps."""

    def __init__(self, con: Any, job_id: str):
        self.con, self.id = con, job_id
        self.history: list[tuple] = []  # (step, training_loss, validation_loss, tokens, elapsed_s)

    def read(self) -> State:
        row = self.con.execute(
            "SELECT status, model, step, total_steps, error.message FROM finetune('DESCRIBE', ?)", [self.id]
        ).fetchall()[0]
        status, model, step, total, error = row
        last = self.history[-1][0] if self.history else 0
        self.history += self.con.execute(
            "SELECT step, training_loss, validation_loss, tokens, elapsed_s FROM finetune_history(?) "
            "WHERE step > ? ORDER BY step", [self.id, last]).fetchall()
        state = State(self.id, status, model, step or 0, total, error=error)
        if self.history:
            state.step = max(state.step, self.history[-1][0])
            state.loss = self.history[-1][1]
            state.validation_loss = next((h[2] for h in reversed(self.history) if h[2] is not None), None)
            self._speed(state)
        return state

    def _speed(self, state: State) -> None:
        # The steps of this run: a resumed job starts its clock again, so they are those after the last reset.
        run = self.history
        for i in range(len(run) - 1, 0, -1):
            if run[i][4] is not None and run[i - 1][4] is not None and run[i][4] < run[i - 1][4]:
                run = run[i:]
                break
        first, last = run[0], run[-1]
        state.elapsed_s = last[4]
        if last[4] is None or first[4] is None:
            return
        if len(run) > 1 and last[4] > first[4]:
            state.tokens_per_s = (last[3] - first[3]) / (last[4] - first[4])
            per_step = (last[4] - first[4]) / (last[0] - first[0])
        elif last[4] > 0:
            state.tokens_per_s = last[3] / last[4] if len(run) == len(self.history) else None
            per_step = last[4] / max(1, last[0])
        else:
            return
        if state.total_steps:
            state.eta_s = max(0.0, (state.total_steps - state.step) * per_step)


def watch(con: Any, job_id: str, *, out: TextIO, live: bool | None = None, interval: float = 0.5) -> str:
    """Follow a job until it is done; return its final status. Ctrl-C raises KeyboardInterrupt: the job goes on.

    ``live``: a rich progress bar (default: when ``out`` is a terminal); otherwise plain lines.
    """
    if live is None:
        live = getattr(out, "isatty", lambda: False)()
    reader = Reader(con, job_id)
    state = reader.read()
    if live:
        state = _live(reader, state, out, interval)
    else:
        state = _plain(reader, state, out, interval)
    out.write(_summary(state) + "\n")
    out.flush()
    return state.status


def _plain(reader: Reader, state: State, out: TextIO, interval: float) -> State:
    status, step, shown_at = "", -1, 0.0
    while state.status not in DONE:
        now = time.monotonic()
        if state.status != status or (state.step != step and now - shown_at >= PLAIN_EVERY_S):
            out.write(state.line() + "\n")
            out.flush()
            status, step, shown_at = state.status, state.step, now
        time.sleep(interval)
        state = reader.read()
    return state


def _live(reader: Reader, state: State, out: TextIO, interval: float) -> State:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    console = Console(file=out, force_terminal=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[figures]}")]
    with Progress(*columns, console=console, transient=True, refresh_per_second=4) as bar:
        task = bar.add_task(state.model, total=state.total_steps or None, steps="", figures="")
        while True:
            steps = f"step {state.step}/{state.total_steps}" if state.total_steps else state.status.lower()
            bar.update(task, completed=state.step, total=state.total_steps or None, steps=steps,
                       figures="  ".join(_figures(state)))
            if state.status in DONE:
                return state
            time.sleep(interval)
            state = reader.read()


def _summary(state: State) -> str:
    took = f" in {_clock(state.elapsed_s)}" if state.elapsed_s else ""
    if state.status == "SUCCESS":
        losses = [f for f in _figures(State(state.id, "SUCCESS", state.model, loss=state.loss,
                                            validation_loss=state.validation_loss))]
        return f"{state.id} SUCCESS{took}: model {state.model} ({', '.join(losses) or 'no loss recorded'})"
    if state.status == "ERROR":
        return f"{state.id} ERROR after step {state.step}: {state.error}"
    return f"{state.id} {state.status} at step {state.step}"


def evaluation_line(session_id: str) -> str | None:
    """A running EVALUATE of this session in one line (rows generated of all, the model now, ETA), or None."""
    from ..evaluation.evaluate import RUNNING

    run = RUNNING.get(session_id)
    if not run:
        return None
    done, total = run["done"], run["total"]
    elapsed = time.monotonic() - run["started"]
    parts = [run["id"], "EVALUATE", f"{done}/{total} rows", f"model {run['model']}"]
    if done:
        parts.append(f"ETA {_clock(elapsed * (total - done) / done)}")
    return "  ".join(parts)
