"""One training process of a job that runs on several (``python -m duckdb_ft.ml.distributed [FOLDER]``, started by
torchrun): DDP (or FSDP2 with strategy "fsdp") over gloo on CPUs or NCCL on CUDA GPUs, and the channel through
which it reports to the job.

The job's worker (:mod:`duckdb_ft.jobs.launch`) writes FOLDER: ``job.json`` (base model, options),
``train.arrow`` / ``validation.arrow`` (the job's snapshot rows), ``resume.pt`` and ``initial.safetensors`` when
resuming or continuing a model, and listens on ``FOLDER/channel``. The *leader*, the lowest rank that has FOLDER
(machines that join from elsewhere have none; torchrun's c10d rendezvous numbers machines in the order they join),
reads it and broadcasts it to every rank, so another machine needs only the base model. Every rank tokenizes the
same rows and plans the same steps (:func:`duckdb_ft.ml.training.train` with :class:`Ranks`); each takes every
size-th micro-batch of a step, DDP averages the LoRA gradients (FSDP reduce-scatters them), and losses and token counts are summed over the
ranks, so a step's loss is the same as on one process with the same global batch. Only the leader reports: each
step's metrics, checkpoints, and the adapter at the end; it reads CANCEL or shutdown from the channel, and every
rank stops at the same step.

A rank dies with its parent (``PR_SET_PDEATHSIG``): a SIGKILL of the database's process kills torchrun, which
kills the ranks; a failing rank writes ``FOLDER/error-RANK`` and torchrun stops the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from typing import Any, Callable

from . import training

CHANNEL = "channel"
BIG = 1 << 30


def die_with_parent() -> Callable[[], None]:
    """A function that makes the calling process receive SIGKILL when its parent dies (Linux; elsewhere a no-op).
    Built before a fork, so that the child (a ``preexec_fn``) only calls into libc already loaded."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return arm


# ------------------------------------------------------------------------------------------------ the channel


def send(conn: Any, header: dict[str, Any], blob: bytes | None = None) -> None:
    """One message: a JSON header, then the bytes it announces (``"blob": true``)."""
    conn.send_bytes(json.dumps({**header, "blob": blob is not None}).encode())
    if blob is not None:
        conn.send_bytes(blob)


def receive(conn: Any) -> tuple[dict[str, Any], bytes | None]:
    header = json.loads(conn.recv_bytes())
    return header, (conn.recv_bytes() if header["blob"] else None)


class Leader:
    """The leader's end of the channel: its training hooks."""

    def __init__(self, folder: str):
        from multiprocessing.connection import Client

        self.conn = Client(os.path.join(folder, CHANNEL), family="AF_UNIX")
        self.stop_mode = 0

    def hooks(self) -> training.Hooks:
        return training.Hooks(on_step=lambda m: send(self.conn, {"kind": "step", "metric": m}),
                              should_stop=self.should_stop, checkpoint_on_stop=lambda: self.stop_mode == 2,
                              save_checkpoint=lambda step, state: send(self.conn, {"kind": "checkpoint",
                                                                                   "step": step}, state))

    def should_stop(self) -> bool:
        try:
            while not self.stop_mode and self.conn.poll(0):
                header, _ = receive(self.conn)
                if header["kind"] == "stop":
                    self.stop_mode = 2 if header.get("checkpoint") else 1
        except (EOFError, OSError):  # the job's worker is gone: nobody to report to
            self.stop_mode = 1
        return bool(self.stop_mode)


# ------------------------------------------------------------------------------------------------- the ranks


class _LossModule:
    """Built lazily as a torch.nn.Module (torch is imported in functions only): DDP's forward is the loss."""

    @staticmethod
    def build(model: Any) -> Any:
        import torch

        class LossModule(torch.nn.Module):
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, batch: dict[str, Any]) -> Any:
                return training.completion_loss(self.inner, batch)

        return LossModule(model)


class Ranks(training.Local):
    """The world of ``torch.distributed``'s process group: every process plans the same steps and does its share."""

    def __init__(self, device: str, strategy: str = "ddp"):
        import torch.distributed as dist

        self.dist, self.device, self.strategy = dist, device, strategy
        self.size, self.rank = dist.get_world_size(), dist.get_rank()
        self.ddp: Any = None
        self.shards: list[Any] = []

    def prepare(self, model: Any) -> Callable[[dict[str, Any]], Any]:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.strategy == "fsdp":
            self.shards = shard_layers(model)
            return lambda batch: training.completion_loss(model, batch)
        module = _LossModule.build(model)
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        DDP._set_params_and_buffers_to_ignore_for_model(module, frozen + [n for n, _ in module.named_buffers()])
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.ddp = DDP(module, device_ids=[local] if self.device == "cuda" else None, broadcast_buffers=False)
        return self.ddp

    def share(self, group: list[Any]) -> list[Any]:
        return group[self.rank::self.size]

    def sync(self, last: bool) -> Any:
        for layer in self.shards:  # fsdp: gradients reduce-scattered on the last micro-batch only
            layer.set_requires_gradient_sync(last)
        if self.shards or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def total(self, *values: float) -> tuple[float, ...]:
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return tuple(t.tolist())

    def evaluate(self, model: Any, examples: list[Any], batch_size: int, pad_id: int, device: str) -> float | None:
        if not examples:
            return None
        if self.shards:  # sharded layers gather their weights with every other rank: the same batches on each
            import torch

            t = torch.tensor([training.evaluate(model, examples, batch_size, pad_id, device)], dtype=torch.float64,
                             device=self.device)
            self.dist.broadcast(t, 0)  # one value everywhere, so every rank keeps the same best step
            return float(t.item())
        shard = examples[self.rank::self.size]
        mean = training.evaluate(model, shard, batch_size, pad_id, device) if shard else None
        n = sum(1 for e in shard for x in e.labels[1:] if x != training.IGNORE)  # completion_loss's count
        total, count = self.total((mean or 0.0) * n, n)
        return total / max(count, 1)

    def adapter_state(self, model: Any) -> dict[str, Any]:
        return {k: _whole(v) for k, v in training.Local.adapter_state(self, model).items()}

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        state = optimizer.state_dict()
        return {**state, "state": {i: {k: _whole(v) for k, v in s.items()} for i, s in state["state"].items()}}

    def load_optimizer(self, optimizer: Any, state: dict[str, Any]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        optimizer.load_state_dict(state)
        for p, s in optimizer.state.items():
            if isinstance(p, DTensor):
                for k, v in s.items():
                    if not isinstance(v, DTensor) and getattr(v, "shape", None) == p.shape:
                        s[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)

    def stop(self, hooks: training.Hooks) -> int:
        import torch

        mine = training.Local.stop(self, hooks)  # only the leader's hooks answer; the others say 0
        t = torch.tensor([mine], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())


def _whole(v: Any) -> Any:
    """A sharded tensor gathered whole (every rank calls this with its shard), anything else as it is."""
    return v.full_tensor() if hasattr(v, "full_tensor") else v


def shard_layers(model: Any) -> list[Any]:
    """FSDP2 (``fully_shard``) over each decoder layer: a layer's weights, frozen base and LoRA alike, are split
    across the ranks and gathered for its forward and backward only; LoRA's gradients are reduce-scattered. The
    embeddings, final norm and LM head stay whole (tied in small models; they hold no LoRA weights)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = list(inner.get_decoder().layers)
    for layer in layers:
        fully_shard(layer)
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if outside:
        raise ValueError(f'strategy "fsdp" shards the decoder layers only, and LoRA also adapts {outside[:3]}: '
                         'leave those out of target_modules, or use strategy "ddp"')
    return layers


def read_job(folder: str) -> dict[str, Any]:
    """What the job's worker wrote into ``folder``, as one object to broadcast."""
    import pyarrow.ipc

    def rows(name: str) -> list[tuple[str, str]] | None:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return None
        table = pyarrow.ipc.open_file(path).read_all()
        return list(zip(table.column("prompt").to_pylist(), table.column("completion").to_pylist()))

    def blob(name: str) -> bytes | None:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    with open(os.path.join(folder, "job.json")) as f:
        job = json.load(f)
    job = {**job, "train": rows("train.arrow"), "validation": rows("validation.arrow"),
           "resume": blob("resume.pt"), "initial": blob("initial.safetensors")}
    for name in ("train.arrow", "validation.arrow", "resume.pt", "initial.safetensors"):
        with contextlib.suppress(OSError):  # read once: the user's rows do not wait on disk for the job's end
            os.remove(os.path.join(folder, name))
    return job


def train_job(job: dict[str, Any], world: Ranks, hooks: training.Hooks) -> training.TrainResult:
    """The job's training on this rank: the same tokenization and model as a one-process job."""
    from ..options import TrainingOptions
    from . import data, models

    opts = TrainingOptions.from_json(job["options"])
    path = models.resolve(job["base"])  # by name: another machine has its own folder for it
    tokenizer = models.load_tokenizer(path)
    train_ex = data.tokenize_pairs(tokenizer, job["train"], opts.max_seq_length)
    val_ex = (data.tokenize_pairs(tokenizer, job["validation"], opts.max_seq_length) if job["validation"]
              else data.loss_sample(train_ex))
    base = models.load_base_for_training(path, opts.quantization)
    models.unload_all()  # no COMPLETE here: the shared copy would keep the whole weights that fsdp shards
    initial = models.adapter_from_bytes(job["initial"]) if job["initial"] and not job["resume"] else None
    return training.train(base, train_ex, val_ex, opts, tokenizer.pad_token_id, hooks, resume=job["resume"],
                          initial=initial, world=world)


def main(argv: list[str]) -> int:
    die_with_parent()()
    if os.getppid() == 1:  # the parent died before the line above
        return 1
    folder = argv[0] if argv else None
    import datetime

    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    rank, leader = dist.get_rank(), None
    try:
        has_job = folder is not None and os.path.isfile(os.path.join(folder, "job.json"))
        if has_job:
            with open(os.path.join(folder, f"pid-{rank}"), "w") as f:
                f.write(str(os.getpid()))
        t = torch.tensor([rank if has_job and os.environ.get("LOCAL_RANK") == "0" else BIG], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        first = int(t.item())
        if first == BIG:
            raise RuntimeError("no training process has the job's folder: start the first machine's processes "
                               "from DuckDB (finetune('CREATE', ...)), the others with torchrun")
        leader = Leader(folder) if rank == first else None
        box = [read_job(folder) if leader else None]
        dist.broadcast_object_list(box, src=first)
        world = Ranks(device, json.loads(box[0]["options"]).get("strategy", "ddp"))
        result = train_job(box[0], world, leader.hooks() if leader else training.Hooks())
        if leader:
            from . import models

            fields = {k: getattr(result, k) for k in ("lora_config", "training_loss", "validation_loss", "steps",
                                                       "epochs", "best_step", "stopped_early")}
            send(leader.conn, {"kind": "result", **fields}, models.adapter_to_bytes(result.adapter))
        return 0
    except training.Cancelled:
        if leader:
            with contextlib.suppress(OSError):
                send(leader.conn, {"kind": "cancelled"})
        return 0
    except BaseException as e:
        traceback.print_exc()
        if folder is not None and os.path.isdir(folder):
            with open(os.path.join(folder, f"error-{rank}"), "w") as f:
                f.write(f"{type(e).__name__}: {e}")
        return 1
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
