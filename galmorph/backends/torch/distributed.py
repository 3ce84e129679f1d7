"""Data-parallel PyTorch: DistributedDataParallel, one process per device, under torchrun.

`galmorph train --backend torch --devices N` re-executes itself under torchrun's agent, as
`torchrun --standalone --nproc-per-node N -m galmorph train ...` would (`launch`, `agent`).
Over several machines the user starts torchrun on every node (`torchrun --nnodes M
--nproc-per-node K --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m galmorph train
--devices M*K ...`): `devices` is then the world size, every node's processes together
(`check_world`). Each process joins the group in `init` (NCCL with GPUs,
gloo on CPUs) and trains its shard of every epoch (galmorph.data.pipeline.Shard). Rank 0
alone evaluates, logs to MLflow (with every rank's host and epoch timings) and decides early
stopping; the decision is broadcast so all ranks stop together.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile

import torch
import torch.distributed as dist

from galmorph.core.errors import GalmorphError

RESULT_ENV = "GALMORPH_RESULT_FILE"
_REPLICAS: list[dict] = []  # where every rank runs, gathered once as the group is joined


def under_launcher() -> bool:
    """True in a process started by torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if under_launcher() else 0


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if under_launcher() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if under_launcher() else 0


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if under_launcher() else 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init(devices: int) -> None:
    """Join the process group when running under torchrun with devices > 1."""
    if devices <= 1 or not under_launcher() or (dist.is_available() and dist.is_initialized()):
        return
    check_world(devices)
    if torch.cuda.is_available():
        if torch.cuda.device_count() < local_world_size():
            raise GalmorphError(f"{local_world_size()} processes per node but only {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")
    # left up to the interpreter's exit (a run that fails after joining), gloo's threads end in
    # "terminate called without an active exception" and SIGABRT instead of the exit status
    atexit.register(shutdown)
    here = {"rank": rank(), "node": int(os.environ.get("GROUP_RANK", 0)), "local_rank": local_rank(),
            "host": socket.gethostname()}
    _REPLICAS[:] = [None] * world_size()
    dist.all_gather_object(_REPLICAS, here)


def check_world(devices: int) -> None:
    """Under torchrun, `devices` must be the world size: the processes of every node together."""
    world = int(os.environ["WORLD_SIZE"])
    if world != devices:
        nodes = os.environ.get("GROUP_WORLD_SIZE", "?")
        raise GalmorphError(f"--devices {devices} but torchrun started {world} processes ({nodes} nodes x "
                            f"{local_world_size()} per node); pass --devices {world}: under torchrun, devices "
                            "counts the processes of all nodes together")


def agree(value, devices: int):
    """Rank 0's `value` on every rank of a data-parallel run under torchrun (the group joined
    first); `value` itself outside one."""
    init(devices)
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def replicas() -> list[dict]:
    """Every rank's {rank, node, local_rank, host} in a data-parallel run; [] otherwise."""
    return list(_REPLICAS) if active() else []


def epoch_totals(sums: torch.Tensor, seen: int, seconds: float) -> tuple[torch.Tensor, int, list[tuple[float, int]]]:
    """One collective at the end of an epoch: this rank's (loss sum, correct) `sums`, its `seen`
    images and its `seconds` of training from every rank. Returns the summed (loss sum,
    correct), the images of all ranks, and each rank's (seconds, images) in rank order."""
    row = torch.cat([sums, torch.tensor([float(seen), seconds], device=sums.device, dtype=sums.dtype)])
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    table = torch.stack(rows)
    per_rank = [(float(s), int(n)) for n, s in table[:, 2:].tolist()]
    return table[:, :2].sum(dim=0), int(table[:, 2].sum().item()), per_rank


def broadcast_flags(*flags: bool) -> tuple[bool, ...]:
    """Rank 0's flags on every rank (one small collective)."""
    if not active():
        return flags
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=dev)
    dist.broadcast(t, src=0)
    return tuple(bool(v) for v in t.tolist())


def launch(argv: list[str], devices: int) -> dict:
    """Run `python -m galmorph <argv>` as `devices` torchrun processes; return rank 0's metrics.

    With GPUs, `devices` must not exceed the GPUs visible here; without any, the processes
    train on CPU cores (gloo), which is for testing the data-parallel path only.
    """
    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise GalmorphError(f"devices={devices} but only {torch.cuda.device_count()} GPUs are visible")
    with tempfile.TemporaryDirectory(prefix="galmorph-ddp-") as tmp:
        result = os.path.join(tmp, "metrics.json")
        cmd = [sys.executable, "-c", "import sys; from galmorph.backends.torch import distributed as d; "
               "sys.exit(d.agent(sys.argv[1:]))", "--standalone", f"--nproc-per-node={devices}",
               "-m", "galmorph", *argv]
        proc = subprocess.run(cmd, env={**os.environ, RESULT_ENV: result})
        if proc.returncode != 0:  # the process that failed first has said why
            raise GalmorphError(f"data-parallel training failed: one of its {devices} processes ended with "
                                f"exit status {proc.returncode}")
        with open(result) as fh:
            return json.load(fh)


def agent(argv: list[str]) -> int:
    """torchrun (`argv`: its arguments) for `launch`, without its own log lines and report of a
    failed worker: each worker prints its own error (`galmorph: error: ...`, or its traceback).
    Returns the exit status of the worker that failed first (128 + N for signal N), 0 if none did."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        code = exc.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code
    except SignalException as exc:  # Ctrl-C or SIGTERM: the workers got it too and have stopped
        return 128 + int(exc.sigval)
    return 0


def write_result(metrics: dict) -> None:
    """Rank 0 hands its final metrics to the launching process."""
    path = os.environ.get(RESULT_ENV)
    if path and rank() == 0:
        with open(path, "w") as fh:
            json.dump(metrics, fh)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
