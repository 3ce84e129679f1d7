"""Facts about the machine and the libraries, for run parameters (framework-free)."""

from __future__ import annotations

import os
import platform
from importlib import metadata

LIBRARIES = ("galmorph", "numpy", "h5py", "scikit-learn", "mlflow", "optuna", "keras", "tensorflow",
             "tensorflow-cpu", "torch")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Read from /proc/self/status (VmHWM) where it exists: getrusage's ru_maxrss also counts
    the parent's peak, which Linux carries across fork and exec (e.g. the `mlflow run` CLI's).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
