"""Keras devices and settings: seeds and threads, the dtype policy, the tf.distribute strategy,
and the performance settings resolved for this machine (galmorph.core.acceleration).

Keras trains every device from one process, so replica/launch/finish are trivial here.
"""

from __future__ import annotations

import os

import keras

from galmorph.core import acceleration, system, training
from galmorph.core.errors import GalmorphError

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_STRATEGIES: dict = {}


def setup(seed: int, threads: int = 0, devices: int = 1) -> dict:
    """Seed and threads; without GPUs and with devices > 1, split the CPU into that many
    logical devices (CPU replicas for testing MirroredStrategy)."""
    import tensorflow as tf

    threads = threads or system.cpu_count()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # already initialised in this process
            pass
    if devices > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError:  # already initialised: keep what is there
            pass
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    info = {"device": "GPU" if gpus else "CPU", "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}"}
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        info["device_name"] = details.get("device_name", gpus[0].name)
    else:
        info["device_name"] = system.cpu_name()
    return info


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _bf16_supported(gpus) -> bool:
    import tensorflow as tf

    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
    return bool(cc) and cc[0] >= 8  # Ampere and later


def settings(hyper: training.Hyper) -> acceleration.Settings:
    gpus = _gpus()
    return acceleration.resolve(hyper, on_gpu=bool(gpus),
                                bf16_supported=_bf16_supported(gpus))


def resolved(hyper: training.Hyper) -> dict:
    """The performance settings this backend applies for `hyper`, for logging (Keras
    convolutions are NHWC whatever channels_last says; pinned copies are tf.data's own)."""
    s = settings(hyper)
    return {**s.as_params(), "channels_last_resolved": True, "pin_memory_resolved": False}


def policy(precision: str) -> "keras.DTypePolicy":
    return keras.DTypePolicy(POLICIES[precision])


def strategy(devices: int):
    """The tf.distribute strategy to build and train under, or None for Keras's default (CPU).

    One GPU: OneDeviceStrategy, whose distributed dataset prefetches batches to the GPU.
    Several: MirroredStrategy over the first `devices` GPUs, or over `devices` logical CPUs
    (see setup) where there is no GPU. One strategy object per device count and process.
    """
    import tensorflow as tf

    gpus = _gpus()
    if devices <= 1 and not gpus:
        return None
    if devices not in _STRATEGIES:
        if gpus and len(gpus) < devices:
            raise GalmorphError(f"devices={devices} but only {len(gpus)} GPUs are visible")
        if devices <= 1:
            _STRATEGIES[devices] = tf.distribute.OneDeviceStrategy("/gpu:0")
        else:
            kind = "GPU" if gpus else "CPU"
            names = [d.name for d in tf.config.list_logical_devices(kind)][:devices]
            _STRATEGIES[devices] = tf.distribute.MirroredStrategy(names)
    return _STRATEGIES[devices]


def replica() -> tuple[int, int]:
    """(rank, world size) of this process: Keras trains all devices from one process."""
    return 0, 1


def agree(value, devices: int):
    """`value`: Keras trains from one process (launch refuses a launcher's processes)."""
    return value


def launch(argv: list[str], devices: int) -> dict | None:
    """Keras needs no launcher (MirroredStrategy runs in this process): always None. A process
    that a launcher (torchrun) started as one of several is refused: Keras does not train
    across processes or machines (MultiWorkerMirroredStrategy is not wired)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GalmorphError(f"Keras trains on the devices of one machine, from one process; this is one of "
                            f"{os.environ['WORLD_SIZE']} processes of a launcher: start galmorph without torchrun, "
                            "or use --backend torch to train over several processes or nodes")
    return None


def finish(metrics: dict) -> None:
    """End of a run in this process (nothing to hand over in Keras)."""
