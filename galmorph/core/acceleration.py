"""What the performance settings mean, whatever the backend (framework-free).

A backend supplies facts (is there a GPU, does it do bf16) and gets back the one decision
both backends apply: the same `auto` rules, the same names in MLflow. How each setting is
implemented lives in the backend folders (`precision_policy`, `compile_step`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from galmorph.core.errors import GalmorphError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCH = ("auto", "true", "false")
# Batches made ahead by worker threads with a GPU: the host must gather ~20k images/s there.
GPU_LOADER_WORKERS = 4


@dataclass(frozen=True)
class Settings:
    """Resolved performance settings of one run (logged as `*_resolved` parameters)."""

    precision: str  # fp32 | bf16 | fp16
    compile: bool
    channels_last: bool
    loader_workers: int
    prefetch: int
    pin_memory: bool
    devices: int

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without it; bf16 has fp32's exponent range and needs none."""
        return self.precision == "fp16"

    def as_params(self) -> dict:
        return {f"{k}_resolved": v for k, v in self.__dict__.items()}


def switch(value: str | bool, on_gpu: bool) -> bool:
    """auto -> on with a GPU only; true/false as given."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return on_gpu
    if value in ("true", "false"):
        return value == "true"
    raise GalmorphError(f"expected auto, true or false, got {value!r}")


def precision(value: str, on_gpu: bool, bf16_supported: bool) -> str:
    """auto -> bf16 on a GPU that supports it (fp16 on an older one), fp32 on the CPU."""
    if value == "auto":
        if not on_gpu:
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if value not in PRECISIONS:
        raise GalmorphError(f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
    return value


def resolve(hyper, *, on_gpu: bool, bf16_supported: bool) -> Settings:
    """The settings a backend applies for `hyper` (a galmorph.core.training.Hyper)."""
    workers = hyper.loader_workers or (GPU_LOADER_WORKERS if on_gpu else 1)
    return Settings(
        precision=precision(hyper.precision, on_gpu, bf16_supported),
        compile=switch(hyper.compile, on_gpu),
        channels_last=switch(hyper.channels_last, on_gpu),
        loader_workers=int(workers),
        prefetch=int(hyper.prefetch),
        pin_memory=switch(hyper.pin_memory, on_gpu) and on_gpu,
        devices=int(hyper.devices),
    )
