"""A job on several processes (torchrun, DDP over gloo on this CPU): the same steps, losses and tokens as one
process with the same global batch and seed; no training process outlives a CANCEL, a closed database, a failed
rank or a SIGKILL of the database's process; options the machine cannot run are clear errors at CREATE.

Each multi-process job starts torchrun and two Python processes that load the model (~10 s on 2 cores), so the
jobs here are few and tiny.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

import duckdb_ft
from conftest import catalog_counts, create, describe, one, rows, wait, wait_for
from duckdb_ft.jobs import launch
from duckdb_ft.ml import devices
from duckdb_ft.options import TrainingOptions

QUERY = "SELECT question AS prompt, answer AS completion FROM faq"
MARKERS = (b"torch.distributed.run", b"duckdb_ft.ml.distributed")


def training_processes(root: int) -> list[int]:
    """Live torchrun and rank processes descending from ``root``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            if alive(pid) and any(m in _cmdline(pid) for m in MARKERS):
                out.append(pid)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def assert_all_gone(pids: list[int], timeout: float = 30) -> None:
    wait_for(lambda: not [p for p in pids if alive(p)], timeout, f"training processes {pids} to end")


def running_ranks(con, job: str, root: int) -> list[int]:
    """Once the job has made a step: torchrun and its two ranks."""
    def ready():
        found = training_processes(root)
        step = one(con, "SELECT coalesce(step, 0) FROM duckdb_ft.jobs WHERE id = ?", job)
        return found if len(found) == 3 and step >= 1 else None
    return wait_for(ready, 180, "torchrun and 2 ranks training")


@pytest.mark.slow
def test_two_processes_train_the_same_steps_and_losses_as_one_with_the_same_global_batch(faq, tiny_model_path):
    """DDP and FSDP alike: each step of the 2-process job sees the same 4 pairs as the 1-process job's step (the
    global batch is batch_size x gradient_accumulation_steps x devices), so the losses differ only by float32
    rounding: sums taken in another order (packing of 2 pairs a rank instead of 4, gloo's all-reduce and
    reduce-scatter). Measured: under 1e-7 relative; 1e-5 leaves room for other CPUs' kernels, and is far below a
    step's change (~1e-2)."""
    con = faq
    one_job = create(con, "one", tiny_model_path, QUERY, options={"max_epochs": 2, "batch_size": 4, "dtype": "float32"})
    two = {"max_epochs": 2, "batch_size": 2, "devices": 2, "dtype": "float32"}
    two_job = create(con, "two", tiny_model_path, QUERY, options=two)
    fsdp_job = create(con, "two_fsdp", tiny_model_path, QUERY, options={**two, "strategy": "fsdp"})
    assert wait(con, one_job) == "SUCCESS"
    for two_job in (two_job, fsdp_job):
        assert wait(con, two_job) == "SUCCESS", describe(con, two_job)
        check_same_training(con, one_job, two_job)
    answers = [json.loads(one(con, "SELECT complete(?, 'What is code number 3?', '{\"max_tokens\": 8}')", m))
               for m in ("one", "two", "two_fsdp")]
    assert answers[0]["choices"] == answers[1]["choices"] == answers[2]["choices"]  # the adapters load, answer alike
    assert not training_processes(os.getpid())


def check_same_training(con, one_job, two_job):
    a, b = describe(con, one_job), describe(con, two_job)
    assert (a["workers"], b["workers"]) == (1, 2)
    assert a["step"] == b["step"] == a["total_steps"] == b["total_steps"] == 10
    assert a["trained_tokens"] == b["trained_tokens"]
    history = "SELECT step, training_loss, validation_loss, tokens FROM finetune_history(?) ORDER BY step"
    ha, hb = rows(con, history, one_job), rows(con, history, two_job)
    assert [(s, t) for s, _, _, t in ha] == [(s, t) for s, _, _, t in hb]  # same steps, same tokens at each
    for (_, la, va, _), (_, lb, vb, _) in zip(ha, hb):
        assert lb == pytest.approx(la, rel=1e-5)
        assert (va is None) == (vb is None) and (va is None or vb == pytest.approx(va, rel=1e-5))
    assert b["training_result"]["validation_loss"] == pytest.approx(a["training_result"]["validation_loss"], rel=1e-5)


@pytest.mark.slow
def test_closing_the_database_or_cancel_end_every_training_process_and_the_job_resumes(tmp_path, tiny_model_path):
    """Closing the database checkpoints the job and ends its processes; RESUME goes on from that checkpoint in new
    processes, which a CANCEL then ends too. With strategy fsdp: the checkpoint is gathered from the shards and the
    resumed optimizer state split again."""
    path = str(tmp_path / "closing.duckdb")
    con = duckdb_ft.connect(path)
    con.execute("CREATE TABLE faq AS SELECT 'Question ' || i || '?' AS question, 'Answer ' || i || '.' AS answer "
                "FROM range(200) t(i)")
    job = create(con, "closing", tiny_model_path, QUERY,
                 options={"max_epochs": 10, "batch_size": 1, "devices": 2, "strategy": "fsdp"})
    pids = running_ranks(con, job, os.getpid())
    con.close()
    assert_all_gone(pids, 10)
    con = duckdb_ft.connect(path)
    try:
        status, error, step = rows(con, "SELECT status, error, step FROM duckdb_ft.jobs")[0]
        if status == "ERROR":  # not yet resumed by this open
            assert "database was closed" in error
            one(con, "SELECT finetune('RESUME', ?)", job)
        [(saved,)] = rows(con, "SELECT step FROM duckdb_ft.checkpoints")
        assert saved == step > 0  # saved as it stopped
        pids = running_ranks(con, job, os.getpid())
        wait_for(lambda: one(con, "SELECT max(step) > ? FROM finetune_history(?)", saved, job), 60, "a new step")
        # From the checkpoint: steps 1..saved are not trained (and recorded) again.
        assert one(con, "SELECT count(*) = count(DISTINCT step) FROM finetune_history(?)", job)
        assert one(con, "SELECT finetune('CANCEL', ?)", job) == f"Canceled fine-tuning job: {job}"
        assert wait(con, job, 60) == "CANCELLED"
        assert_all_gone(pids)
        assert catalog_counts(con)["models"] == 0 and catalog_counts(con)["checkpoints"] == 0
    finally:
        con.close()


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_job_and_takes_the_others_down(big, tiny_model_path):
    con = big
    job = create(con, "crashing", tiny_model_path, "SELECT p AS prompt, c AS completion FROM big",
                 options={"max_epochs": 10, "batch_size": 1, "devices": 2})
    pids = running_ranks(con, job, os.getpid())
    ranks = [p for p in pids if b"duckdb_ft.ml.distributed" in _cmdline(p)]
    os.kill(ranks[-1], signal.SIGKILL)
    assert wait(con, job, 60) == "ERROR"
    assert re.search(r"distributed training failed: training process of rank \d was killed by SIGKILL",
                     describe(con, job)["error"]["message"]), describe(con, job)["error"]
    assert_all_gone(pids)


PARENT = textwrap.dedent("""
    import sys, time
    import duckdb_ft
    base = sys.argv[1]
    con = duckdb_ft.connect(sys.argv[2])
    con.execute("CREATE TABLE faq AS SELECT 'Q' || i AS question, 'A' || i AS answer FROM range(200) t(i)")
    job = con.execute("SELECT finetune('CREATE', 'orphan', ?, 'SELECT question AS prompt, answer AS completion "
                      "FROM faq', NULL, '{\\"max_epochs\\": 10, \\"batch_size\\": 1, \\"devices\\": 2}')",
                      [base]).fetchall()[0][0]
    while (con.execute("SELECT coalesce(step, 0) FROM duckdb_ft.jobs").fetchall()[0][0] or 0) < 1:
        time.sleep(0.1)
    print("TRAINING", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_sigkill_of_the_database_process_leaves_no_training_process(tmp_path, tiny_model_path):
    child = subprocess.Popen([sys.executable, "-c", PARENT, tiny_model_path, str(tmp_path / "k.duckdb")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "TRAINING", child.stderr.read()
        pids = wait_for(lambda: (lambda p: p if len(p) == 3 else None)(training_processes(child.pid)), 60, "ranks")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert_all_gone(pids, 15)
        # Nothing could remove the killed process's folder, but the rows left it once read; the next job's
        # launch removes the folder.
        import glob
        import tempfile

        # (Under pytest-xdist another worker's launch may remove it first: the same cleanup, run elsewhere.)
        pattern = os.path.join(tempfile.gettempdir(), f"{launch.PREFIX}{child.pid}-*")
        for left in glob.glob(pattern):
            try:
                assert not {"train.arrow", "validation.arrow"} & set(os.listdir(left))
            except FileNotFoundError:
                pass
        launch.remove_stale()
        assert not glob.glob(pattern)
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.parametrize("options, message", [
    ({"devices": devices.cpu_cores() + 1}, r"devices \d+ is more than the \d+ CPU core\(s\)"),
    ({"strategy": "fsdp"}, r"needs devices \(times nodes\) of at least 2"),
    ({"quantization": "4bit"}, 'quantization "4bit" needs a CUDA GPU'),
    ({"nodes": 2}, 'nodes 2 needs rdzv_endpoint: the "host:port"'),
    ({"nodes": 2, "rdzv_endpoint": "no-port"}, 'rdzv_endpoint must be "host:port"'),
    ({"devices": 0}, "devices must be an integer from 1 to 1024"),
    ({"strategy": "zero3"}, 'strategy must be one of "ddp", "fsdp"'),
])
def test_options_this_machine_cannot_run_are_clear_errors_that_create_nothing(faq, tiny_model_path, options,
                                                                               message):
    if devices.this_machine().gpus:
        pytest.skip("these expectations are a CPU machine's")
    before = catalog_counts(faq)
    with pytest.raises(duckdb.Error, match=message):
        create(faq, "m", tiny_model_path, QUERY, options=options)
    assert catalog_counts(faq) == before


@pytest.mark.slow
def test_a_rendezvous_endpoint_that_does_not_answer_fails_after_the_bounded_wait(faq, tiny_model_path):
    """The job's rdzv_timeout (5 s) bounds the wait, not torch's default of 600 s: the job fails within WAIT's
    300 s however busy the machine, and not before its 5 s are out."""
    options = {"max_epochs": 1, "devices": 1, "nodes": 2, "rdzv_endpoint": "192.0.2.1:29400", "rdzv_timeout": 5}
    start = time.monotonic()
    job = create(faq, "lonely", tiny_model_path, QUERY, options=options)
    assert wait(faq, job, 300) == "ERROR", describe(faq, job)
    assert time.monotonic() - start >= 5
    message = describe(faq, job)["error"]["message"]
    assert "rendezvous endpoint 192.0.2.1:29400" in message and "Scaling out" in message
    assert not training_processes(os.getpid())


def test_the_gpu_settings_and_the_machine_checks_as_pure_functions():
    gpu = devices.Machine(gpus=8, cores=64)
    s = devices.load_settings(gpu)
    assert (s.device, s.dtype, s.attn_implementation, s.cpu_kernels) == ("cuda", "bfloat16", "sdpa", False)
    assert devices.load_settings(devices.Machine(gpus=1, cores=8, flash_attention=True)).attn_implementation == \
        "flash_attention_2"
    assert devices.load_settings(devices.Machine(gpus=1, cores=8, bf16=False)).dtype == "float16"
    cpu = devices.load_settings(devices.Machine(gpus=0, cores=2))
    assert (cpu.device, cpu.dtype, cpu.attn_implementation, cpu.cpu_kernels) == ("cpu", "float32", None, True)
    import torch

    from duckdb_ft.ml import models

    # What from_pretrained gets: bf16 weights and sdpa on a GPU, the float32 weights as before on a CPU; QLoRA's
    # NF4 with bf16 compute (and the weights placed on the GPU at load: quantized weights cannot move).
    assert models.load_kwargs(s) == {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    assert models.load_kwargs(cpu) == {"dtype": torch.float32}
    q = devices.quantization_config(devices.load_settings(gpu, "4bit"))
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_compute_dtype) == (True, "nf4", torch.bfloat16)
    assert devices.quantization_config(devices.load_settings(gpu, "8bit")).load_in_8bit
    assert devices.quantization_config(s) is None
    with pytest.raises(duckdb.Error, match="needs a CUDA GPU"):
        devices.load_settings(devices.Machine(gpus=0, cores=2), "8bit")
    devices.check_machine(TrainingOptions.parse('{"devices": 8}'), gpu)  # fits: no error
    with pytest.raises(duckdb.Error, match=r"devices 9 is more than the 8 CUDA GPU\(s\)"):
        devices.check_machine(TrainingOptions.parse('{"devices": 9}'), gpu)
    with pytest.raises(duckdb.Error, match="needs bitsandbytes"):
        devices.check_machine(TrainingOptions.parse('{"quantization": "4bit"}'), gpu)
    devices.check_machine(TrainingOptions.parse('{"quantization": "4bit"}'), devices.Machine(8, 64, True))
    devices.check_machine(TrainingOptions.parse('{"devices": 8, "strategy": "fsdp"}'), gpu)
    with pytest.raises(duckdb.Error, match='"fsdp" cannot shard 4bit'):
        devices.check_machine(TrainingOptions.parse('{"devices": 2, "strategy": "fsdp", "quantization": "4bit"}'),
                              devices.Machine(8, 64, True))


def test_global_batch_steps_and_the_torchrun_command_of_each_machine():
    opts = TrainingOptions.parse(json.dumps({"batch_size": 2, "gradient_accumulation_steps": 3, "devices": 4,
                                             "nodes": 2, "rdzv_endpoint": "10.0.0.1:29400", "rdzv_timeout": 30}))
    assert opts.world_size == 8 and opts.global_batch == 48
    assert opts.steps_per_epoch(96) == 2 and opts.steps_per_epoch(97) == 3
    assert TrainingOptions(batch_size=4).steps_per_epoch(24) == TrainingOptions(batch_size=2, devices=2).steps_per_epoch(24)
    here = launch.torchrun_command(opts, "/tmp/job")
    other = launch.torchrun_command(opts)
    assert here[-3:] == ["-m", "duckdb_ft.ml.distributed", "/tmp/job"] and other[-1] == "duckdb_ft.ml.distributed"
    for cmd in (here, other):
        text = " ".join(cmd)
        assert "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29400 --rdzv-id duckdb-ft" in text
        assert "--nproc-per-node 4" in text and "join_timeout=30" in text and "--standalone" not in text
    assert "--standalone" in launch.torchrun_command(TrainingOptions(devices=2), "/tmp/job")


@pytest.mark.slow
def test_another_machine_joins_with_the_readme_command_and_trains_the_same(faq, tiny_model_path, free_port):
    """nodes 2 on one host: this database's torchrun hosts the rendezvous, the "other machine" is a second torchrun
    started with README's command (no job folder: it gets rows and options from the leader); both end cleanly."""
    con = faq
    one_job = create(con, "one", tiny_model_path, QUERY, options={"max_epochs": 1, "batch_size": 4, "dtype": "float32"})
    assert wait(con, one_job) == "SUCCESS"
    opts = {"max_epochs": 1, "batch_size": 2, "dtype": "float32", "nodes": 2,
            "rdzv_endpoint": f"127.0.0.1:{free_port}", "rdzv_timeout": 120}
    job = create(con, "two", tiny_model_path, QUERY, options=opts)
    other = subprocess.Popen(launch.torchrun_command(TrainingOptions.parse(json.dumps(opts))),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert wait(con, job, 240) == "SUCCESS", describe(con, job)
        assert other.wait(90) == 0
    finally:
        if other.poll() is None:
            other.kill()
    d = describe(con, job)
    assert d["workers"] == 2 and d["step"] == describe(con, one_job)["step"]
    history = "SELECT training_loss FROM finetune_history(?) ORDER BY step"
    for (a,), (b,) in zip(rows(con, history, one_job), rows(con, history, job), strict=True):
        assert b == pytest.approx(a, rel=1e-5)


def test_the_readme_shows_the_command_other_machines_run():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("and on each other machine", 1)[1].split("```", 2)[1]
    shown = block.replace("\\\n", " ").split()
    built = launch.torchrun_command(TrainingOptions(devices=8, nodes=2, rdzv_endpoint="10.0.0.1:29400"))
    assert shown == ["python"] + built[1:]


@pytest.fixture
def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
