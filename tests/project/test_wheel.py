"""A wheel built from the project works outside the clone: experiments/ travels as package
data, so `galmorph data info` and a training run find the architectures and schemes.

The wheel goes into a fresh virtual environment that sees what a user's `pip install
galmorph-*.whl` would: its dependencies as this environment has them (a virtual environment,
a conda environment or the system interpreter alike), never the clone."""

import shutil
import site
import subprocess
import sys
from pathlib import Path

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


def _site_dirs() -> list[str]:
    """Where this interpreter finds installed packages: its environment's site-packages (a
    venv's own, and its base's with --system-site-packages; a conda environment's; the system
    interpreter's dist-packages) and the user's site-packages."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _venv_seeing_this_environment(venv: Path) -> Path:
    """A fresh venv whose sys.path ends with this environment's site-packages: plain path lines
    in a .pth, so the .pth files in those folders (an editable install of the clone) are not
    run. (`venv --system-site-packages` from a venv's interpreter sees the base interpreter's
    packages, not the venv's.) Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert purelib.startswith(str(venv)), purelib
    (Path(purelib) / "this_environment.pth").write_text("".join(f"{d}\n" for d in _site_dirs()))
    return py


# run by the venv's python: galmorph's requirements (with the extras in argv) against what it sees
REQUIREMENTS_MET = """
import sys
from importlib import metadata
from packaging.requirements import Requirement
extras, unmet, n = set(sys.argv[1:]), [], 0
for text in metadata.requires("galmorph") or []:
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
        continue
    n += 1
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        unmet.append(f"{req}: not installed")
        continue
    if not req.specifier.contains(have, prereleases=True):
        unmet.append(f"{req}: {have} installed")
print(f"checked {n} requirements" if not unmet else "unmet: " + "; ".join(unmet))
sys.exit(1 if unmet else 0)
"""


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
    py = _venv_seeing_this_environment(venv)
    # the wheel alone, then each of its requirements (with the torch extra) checked against the
    # packages this environment gives the venv: missing, or of a version the wheel does not
    # accept, fails. Not pip's resolver without an index: it also demands that the environment's
    # other packages agree among themselves (pip check), and a venv that Python 3.11 makes with
    # --system-site-packages holds its own setuptools 65, under torch's setuptools>=77, so the
    # resolver refuses any install there although galmorph's requirements are all met.
    installed = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
                               capture_output=True, text=True, timeout=600, env=child_env({"PYTHONPATH": ""}))
    assert installed.returncode == 0, installed.stdout[-1500:] + installed.stderr[-3000:]
    unmet = subprocess.run([str(py), "-c", REQUIREMENTS_MET, "torch"], capture_output=True, text=True, timeout=120,
                           env=child_env({"PYTHONPATH": ""}))
    assert unmet.returncode == 0 and unmet.stdout.startswith("checked "), unmet.stdout + unmet.stderr[-3000:]

    env = child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "GALMORPH_CACHE": str(work / "cache"),
                     "PYTHONPATH": ""})
    env.pop("GALMORPH_EXPERIMENTS", None)
    where = subprocess.run([str(py), "-c", "import galmorph, galmorph.core.paths as p; "
                            "print(galmorph.__file__); print(p.experiments_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    module_file, experiments = where.stdout.split()
    assert module_file.startswith(str(venv)) and experiments.startswith(str(venv)), where.stdout
    # without the wheel the venv has no galmorph: the clone is not on its path
    bare = subprocess.run([str(py), "-c", "import sys; sys.path.remove(sys.argv[1]); import galmorph",
                           str(Path(module_file).parent.parent)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode != 0 and "No module named 'galmorph'" in bare.stderr, bare.stderr[-2000:]

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
