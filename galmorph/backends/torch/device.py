"""PyTorch devices and settings: seeds, threads and the process group, the device of this
process, and the performance settings resolved for this machine (galmorph.core.acceleration).
"""

from __future__ import annotations

import torch

from galmorph.backends.torch import distributed
from galmorph.core import acceleration, system, training

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    return torch.device("cpu")


def setup(seed: int, threads: int = 0, devices: int = 1) -> dict:
    """Seed, threads, and (under torchrun with devices > 1) the process group.

    Threads default to the cores available, shared out among the processes of this node.
    """
    distributed.init(devices)
    cores = max(1, system.cpu_count() // distributed.local_world_size())
    torch.set_num_threads(threads or cores)
    torch.manual_seed(seed)
    dev = device()
    info = {"device": "GPU" if dev.type == "cuda" else "CPU", "framework": f"torch {torch.__version__}"}
    if dev.type == "cuda":
        # TF32 matmuls/convolutions in fp32 mode, as TensorFlow does by default: the backends agree
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
        info["device_name"] = torch.cuda.get_device_name(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        info["device_name"] = system.cpu_name()
    info["replicas"] = distributed.replicas()
    return info


def settings(hyper: training.Hyper) -> acceleration.Settings:
    cuda = torch.cuda.is_available()
    return acceleration.resolve(hyper, on_gpu=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())


def resolved(hyper: training.Hyper) -> dict:
    """The performance settings this backend applies for `hyper`, for logging."""
    return settings(hyper).as_params()


def replica() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside data-parallel training."""
    return distributed.rank(), distributed.world_size()


def launch(argv: list[str], devices: int) -> dict | None:
    """Start `devices` torchrun processes running `galmorph <argv>` and return rank 0's metrics;
    None when this process is itself one of them (started by galmorph or by the user's torchrun
    on several nodes: `devices` must then be their number) or devices == 1."""
    if distributed.under_launcher():
        distributed.check_world(devices)
        return None
    if devices <= 1:
        return None
    return distributed.launch(argv, devices)


def agree(value, devices: int):
    """Rank 0's `value` on every rank under torchrun (galmorph.backends.protocol)."""
    return distributed.agree(value, devices)


def finish(metrics: dict) -> None:
    """End of a run in this process: hand rank 0's metrics to the launcher, leave the group."""
    distributed.write_result(metrics)
    distributed.shutdown()
