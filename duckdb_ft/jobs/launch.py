"""A job on several devices: the worker writes the job's snapshot into a private temporary folder, launches
``python -m torch.distributed.run`` (torchrun) with one process per device running
:mod:`duckdb_ft.ml.distributed`, and turns what the leading process sends over a Unix socket (each step's metrics,
checkpoints, the adapter) into the same hook calls and result as a one-process job.

No training process outlives its job: torchrun runs in a session of its own with ``PR_SET_PDEATHSIG`` (SIGKILL
when the worker's process dies, however), each rank has the same towards torchrun, and whatever is still alive when
the job ends (CANCEL, closing the database, a failed rank, a rendezvous that never completes) is killed by PID.
The folder is removed in every case.
"""

from __future__ import annotations

import glob
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from ..errors import JobError
from ..ml import distributed, models, training
from ..options import TrainingOptions

RDZV_ID = "duckdb-ft"  # torchrun's --rdzv-id on every machine of a job (README "Scaling out")
START_GRACE = 180.0  # seconds, beyond rdzv_timeout, for the processes to load the model and report in
EXIT_GRACE = 2.0  # seconds the processes have to exit on their own once the leader has sent the outcome
EXIT_GRACE_NODES = 60.0  # the same with other machines: their torchrun waits at an exit barrier for this one's
PREFIX = "duckdb-ft-job-"  # job folders: PREFIX + the worker's PID + a random part, in the temporary folder
STOP_GRACE = 60.0  # seconds the processes have to stop at a step boundary after CANCEL before they are killed


def torchrun_command(opts: TrainingOptions, folder: str | None = None) -> list[str]:
    """The torchrun command line of this machine (``folder`` given) or of another machine (``folder`` None)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(opts.devices), "--max-restarts",
           "0", "--monitor-interval", "0.5"]
    if opts.nodes == 1:
        cmd.append("--standalone")
    else:
        t = opts.rdzv_timeout
        cmd += ["--nnodes", str(opts.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", str(opts.rdzv_endpoint),
                "--rdzv-id", RDZV_ID, "--rdzv-conf", f"join_timeout={t},read_timeout={t}"]
    return cmd + ["-m", "duckdb_ft.ml.distributed"] + ([folder] if folder else [])


def environment(opts: TrainingOptions, cores: int, gpus: int) -> dict[str, str]:
    """The processes' environment: this copy of duckdb_ft importable, and on CPUs the cores split between them."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if not gpus:
        env["OMP_NUM_THREADS"] = str(max(1, cores // opts.devices))
    return env


def train(opts: TrainingOptions, base_model: str, rows: Callable[[str], Any], has_validation: bool,
          hooks: training.Hooks, resume: bytes | None = None, initial: bytes | None = None) -> training.TrainResult:
    """Train on ``opts.devices`` processes (and ``opts.nodes`` machines); ``rows(split)`` reads the snapshot;
    ``base_model`` is the name each process resolves (on its own machine).

    Raises training.Cancelled when ``hooks.should_stop()`` stopped it, JobError when a process failed.
    """
    import json

    from ..ml import devices

    remove_stale()
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")  # 0700: the socket and the rows are the user's only
    proc = None
    try:
        with open(os.path.join(folder, "job.json"), "w") as f:
            json.dump({"base": base_model, "options": opts.to_json()}, f)
        _write_rows(os.path.join(folder, "train.arrow"), rows("train"))
        if has_validation:
            _write_rows(os.path.join(folder, "validation.arrow"), rows("validation"))
        for name, blob in (("resume.pt", resume), ("initial.safetensors", initial)):
            if blob:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(blob)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(folder, distributed.CHANNEL))
        listener.listen(1)
        machine = devices.this_machine()
        log = open(os.path.join(folder, "torchrun.log"), "wb")
        with log, listener:
            proc = subprocess.Popen(torchrun_command(opts, folder), env=environment(opts, machine.cores, machine.gpus),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=distributed.die_with_parent())
            return _supervise(proc, listener, folder, opts, hooks)
    finally:
        if proc is not None:
            end_all(proc, folder)
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove the job folders of processes that are gone (a SIGKILL leaves its folder: nothing ran its cleanup;
    the leading rank has already removed the rows from it). Returns the folders removed."""
    removed = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*-*")):
        pid = os.path.basename(path)[len(PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


def _write_rows(path: str, reader: Any) -> None:
    import pyarrow.ipc

    with pyarrow.ipc.new_file(path, reader.schema) as out:
        for batch in reader:
            out.write_batch(batch)


def _supervise(proc: subprocess.Popen, listener: socket.socket, folder: str, opts: TrainingOptions,
               hooks: training.Hooks) -> training.TrainResult:
    start_by = time.monotonic() + opts.rdzv_timeout + START_GRACE
    conn: Connection | None = None
    open_ = True
    stop_sent: float | None = None
    result: tuple[dict[str, Any], bytes] | None = None
    cancelled = False
    done: float | None = None
    while True:
        if conn is None:
            if select.select([listener], [], [], 0.2)[0]:
                sock, _ = listener.accept()
                conn = Connection(sock.detach())
        elif open_:
            try:
                waited = time.monotonic()
                while time.monotonic() - waited < 0.2 and conn.poll(0.05):  # then the stop check, however busy
                    header, blob = distributed.receive(conn)
                    if header["kind"] == "step":
                        hooks.on_step(header["metric"])
                    elif header["kind"] == "checkpoint":
                        hooks.save_checkpoint(header["step"], blob)
                    elif header["kind"] == "result":
                        result = (header, blob)
                    elif header["kind"] == "cancelled":
                        cancelled = True
            except (EOFError, OSError):
                open_ = False
        else:
            time.sleep(0.1)
        if proc.poll() is not None and not (conn is not None and open_ and conn.poll(0)):
            break
        now = time.monotonic()
        if (result is not None or cancelled) and not open_:
            done = done or now
            if now - done > (EXIT_GRACE if opts.nodes == 1 else EXIT_GRACE_NODES):
                break  # the outcome is in; whatever torchrun still does is killed by end_all
        if result is None and hooks.should_stop():
            if conn is None:  # still starting: nothing to checkpoint yet
                raise training.Cancelled()
            if stop_sent is None:
                distributed.send(conn, {"kind": "stop", "checkpoint": bool(hooks.checkpoint_on_stop())})
                stop_sent = now
            elif now - stop_sent > STOP_GRACE:
                raise training.Cancelled()
        if conn is None and now > start_by:
            raise JobError(f"the {opts.world_size} training processes did not start within "
                           f"{opts.rdzv_timeout + START_GRACE:.0f} s{_waiting_for(opts)}: {_log_tail(folder)}")
    if conn is not None:
        conn.close()
    if result is not None:
        header, blob = result
        return training.TrainResult(adapter=models.adapter_from_bytes(blob), **{
            k: header[k] for k in ("lora_config", "training_loss", "validation_loss", "steps", "epochs",
                                   "best_step", "stopped_early")})
    if cancelled:
        raise training.Cancelled()
    raise JobError(f"distributed training failed{_waiting_for(opts) if conn is None else ''}: "
                   f"{_failure(folder, proc.returncode)}")


def _waiting_for(opts: TrainingOptions) -> str:
    if opts.nodes == 1:
        return ""
    return (f" (waiting for {opts.nodes} machines at rendezvous endpoint {opts.rdzv_endpoint} for "
            f"{opts.rdzv_timeout} s: start the other machines as README \"Scaling out\" shows, or check that the "
            "endpoint is this machine's address and its port is free and reachable)")


def _failure(folder: str, code: int | None) -> str:
    """The failing rank's own error, else how torchrun saw it end (its "Root Cause"), else torchrun's last error."""
    log = _read_log(folder)
    root = re.search(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((\w+)\))?\s*\n"
                     r".*?traceback\s*:\s*([^\n]*)", log, re.S)
    errors = sorted((os.path.getmtime(os.path.join(folder, n)), n[6:]) for n in os.listdir(folder)
                    if n.startswith("error-"))
    if root and not os.path.exists(os.path.join(folder, f"error-{root.group(1)}")):
        rank, exitcode, sig, trace = root.groups()
        how = f"was killed by {sig}" if sig and int(exitcode) < 0 else f"exited with code {exitcode}"
        return f"training process of rank {rank} {how} ({trace.strip()[:300]})"
    rank = root.group(1) if root else errors[0][1] if errors else None
    if rank is not None:
        with open(os.path.join(folder, f"error-{rank}")) as f:
            return f"training process of rank {rank}: {f.read().strip()[:1000]}"
    return f"torchrun exited with code {code}: {_log_tail(folder)}"


def _read_log(folder: str) -> str:
    try:
        with open(os.path.join(folder, "torchrun.log"), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _log_tail(folder: str) -> str:
    """torchrun's last error line (an exception's name and message), else its last lines."""
    lines = [ln.strip() for ln in _read_log(folder).splitlines() if ln.strip() and not set(ln.strip()) <= set("=-")]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return (errors[-1] if errors else " | ".join(lines[-5:]))[:1000] or "(no output)"


def rank_pids(folder: str) -> list[int]:
    """The PIDs of this machine's training processes, as they wrote them into ``folder``."""
    out = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith("pid-"):
            try:
                with open(os.path.join(folder, name)) as f:
                    out.append(int(f.read()))
            except (OSError, ValueError):
                continue
    return out


def end_all(proc: subprocess.Popen, folder: str) -> None:
    """Kill torchrun and every training process of the job still alive, and reap torchrun."""
    targets = rank_pids(folder)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's own session
        except OSError:
            pass
    for pid in targets:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"duckdb_ft.ml.distributed" not in f.read():
                    continue  # gone, and the PID already reused by another process
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
