"""A wheel built from the project works outside the clone: experiments/ travels as package
data, so `galmorph data info` and a training run find the architectures and schemes."""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO, child_env


def _copy_tracked_tree(dest):
    """The files git tracks (and untracked, unignored ones): what a clone would build from."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_clone(tmp_path):
    src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    for d in (src, work):
        d.mkdir()
    _copy_tracked_tree(src)
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
    # the installed setuptools first (no download); pip's isolated build where it cannot
    built = subprocess.run(wheel_cmd[:4] + ["--no-build-isolation"] + wheel_cmd[4:], capture_output=True, text=True,
                           timeout=600)
    if built.returncode != 0:
        built = subprocess.run(wheel_cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("galmorph-*.whl")
    # the frameworks and MLflow come from this interpreter's site-packages; galmorph only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    installed = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    env = child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "GALMORPH_CACHE": str(work / "cache"),
                     "PYTHONPATH": ""})
    env.pop("GALMORPH_EXPERIMENTS", None)
    where = subprocess.run([str(py), "-c", "import galmorph, galmorph.core.paths as p; "
                            "print(galmorph.__file__); print(p.experiments_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    module_file, experiments = where.stdout.split()
    assert module_file.startswith(str(venv)) and experiments.startswith(str(venv)), where.stdout

    cli = str(venv / "bin" / "galmorph")
    info = subprocess.run([cli, "data", "info"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "synthetic" in info.stdout and "galaxy10" in info.stdout
    run = subprocess.run([cli, "train", "--backend", "torch", "--dataset", "synthetic", "--synthetic-n", "200",
                          "--epochs", "1", "--batch-size", "32", "--log-model", "false", "--threads", "2"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test accuracy " in run.stdout and "see it: mlflow ui --backend-store-uri " in run.stdout
    assert list((work / "mlruns").rglob("confusion_matrix.png"))  # artifacts land where the user works
