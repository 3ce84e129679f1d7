"""Bad data, each a one-line error naming what is wrong and what to do (issue 12): labels that
would decide the class count, malformed HDF5 files met after opening, malformed schemes files,
max_images below what a stratified split needs, and bad settings; checked through the CLI too."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, child_env, make_h5, run_python

from galmorph import cli
from galmorph.config import TrainConfig
from galmorph.core.errors import GalmorphError
from galmorph.data import hdf5, registry, splits
from galmorph.tracking import artifacts
from galmorph.workflows.prepare import prepare

RNG = np.random.default_rng(12)


def _h5(path, labels, *, n=None, class_names=None, images=None, compression=None):
    """A Galaxy10-format file written with h5py (no checks on the way in)."""
    n = len(labels) if n is None else n
    if images is None:
        images = RNG.integers(0, 250, size=(n, 16, 16, 3), dtype=np.uint8)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=images, chunks=(1,) + images.shape[1:] if images.ndim == 4 else None,
                          compression=compression)
        fh.create_dataset("ans", data=labels)
        if class_names is not None:
            fh.attrs["class_names"] = class_names
    return path


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# --- 1. labels decide the class count --------------------------------------------------------


def test_classes_are_the_distinct_labels_present(tmp_path):
    labels = np.repeat([0, 1, 2, 5000], 6)
    ans = RNG.permutation(labels)
    path = _h5(tmp_path / "sparse.h5", ans)
    data = registry.load(str(path))
    assert data.class_names == ("class_0", "class_1", "class_2", "class_5000")  # not 5001 classes
    assert data.labels.max() == 3 and np.array_equal(data.rows, np.arange(ans.size))
    names = np.array(data.class_names)[data.labels]
    assert names.tolist() == [f"class_{v}" for v in ans[data.rows]]  # each row keeps its own label

    prepared = prepare(TrainConfig(dataset=str(path), val_fraction=0.2, test_fraction=0.2))
    split = prepared.split
    saved = splits.save(split, prepared.data.rows, tmp_path / "splits.json", dataset_digest=prepared.data.digest())
    back = splits.load(saved, prepared.data.rows, dataset_digest=prepared.data.digest())
    assert all(np.array_equal(back[n], split[n]) for n in splits.SPLITS)
    proba = np.eye(4)[prepared.data.labels[split.test]]
    columns = artifacts.prediction_columns(prepared.data, split, proba)
    assert columns["true"] == [f"class_{ans[r]}" for r in columns["row"]]  # predictions name the file's rows
    assert columns["predicted"] == columns["true"]


def test_huge_label_values_cost_nothing(tmp_path):
    # in a child process with 3 GB of address space, so that a label-sized lookup table (8 GB
    # for label 1e9, as before issue 12) fails this test instead of exhausting the machine
    path = _h5(tmp_path / "huge.h5", np.repeat(np.array([7, 10**9], dtype=np.int64), 3))
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from galmorph.data import registry
data = registry.load({str(path)!r})
print(data.class_names, data.labels.tolist())
"""
    proc = run_python(code, env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "('class_7', 'class_1000000000') [0, 0, 0, 1, 1, 1]"


def test_whole_float_labels_are_accepted(tmp_path):
    data = registry.load(str(_h5(tmp_path / "f.h5", np.array([0.0, 1.0, 2.0, 1.0]))))
    assert data.class_names == ("class_0", "class_1", "class_2") and data.labels.tolist() == [0, 1, 2, 1]


def test_user_scheme_names_the_files_own_labels(tmp_path):
    path = _h5(tmp_path / "sparse.h5", np.array([0, 5000, 2, 5000, 0, 2]))
    user = tmp_path / "mine.yaml"
    user.write_text("sparse:\n  schemes:\n    two:\n      classes:\n        low: [0]\n        high: [5000]\n")
    data = registry.load(str(path), "two", schemes_file=str(user))
    assert data.class_names == ("low", "high") and data.rows.tolist() == [0, 1, 3, 4]
    assert data.labels.tolist() == [0, 1, 1, 0]
    user.write_text("sparse:\n  schemes:\n    two:\n      classes:\n        low: [0]\n        high: [3]\n")
    with pytest.raises(GalmorphError, match=r"lists native label 3, but sparse has labels 0, 2, 5000; fix the scheme"):
        registry.load(str(path), "two", schemes_file=str(user))


@pytest.mark.parametrize("labels,message", [
    (np.array([0, 1, -3, 2, -1]), r"`ans` holds negative labels -3, -1; class labels are whole numbers from 0"),
    (np.array([0.0, 1.0, 2.5, 1.0]), r"`ans` holds non-integer labels 2.5 \(first at image 2\)"),
    (np.array([0.0, np.inf, 1.0]), r"`ans` holds non-integer labels inf \(first at image 1\)"),
    (np.array([0.0, np.nan]), r"label of image 1 is NaN"),
    (np.array([0, 2**63 + 5], dtype=np.uint64), r"`ans` holds label 9223372036854775813, too large for a class label"),
    (np.arange(1001), r"`ans` holds 1001 distinct labels \(0, 1, 2, 3, 4 and 996 more\), more than the 1000 classes"),
    (np.array([b"E", b"S0"]), r"`ans` has dtype \|S2; expected integer class labels"),
])
def test_absurd_labels_are_refused_naming_the_values(tmp_path, labels, message):
    path = _h5(tmp_path / "bad.h5", labels)
    with pytest.raises(GalmorphError) as err:
        registry.load(str(path))
    assert _one_line(err).startswith(str(path)) and err.match(message)


def test_labels_beyond_the_class_names(tmp_path):
    path = _h5(tmp_path / "named.h5", np.array([0, 1, 4, 6, 1]), class_names=["a", "b", "c"])
    with pytest.raises(GalmorphError, match=r"label\(s\) 4, 6 are outside the file's 3 class_names"):
        registry.load(str(path))


# --- 3. HDF5 files whose problem shows only after opening -------------------------------------


def _corrupt_chunk(path, image=1):
    with h5py.File(path, "r") as fh:
        chunk = fh["images"].id.get_chunk_info(image)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 8)
        f.write(b"\xff" * 16)


def _dangling(path):
    with h5py.File(path, "a") as fh:
        del fh["ans"]
        fh["ans"] = h5py.ExternalLink("elsewhere.h5", "/ans")


def _replace(name, value):
    def mutate(path):
        with h5py.File(path, "a") as fh:
            del fh[name]
            if isinstance(value, str):
                fh.create_group(name)
            else:
                fh.create_dataset(name, data=value)
    return mutate


def _attr(value):
    def mutate(path):
        with h5py.File(path, "a") as fh:
            fh.attrs["class_names"] = value
    return mutate


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


BAD_FILES = {
    "ans-length": (_replace("ans", np.zeros(5, np.uint8)), r"`ans` has shape \(5,\) but there are 6 images"),
    "images-3d": (_replace("images", np.ones((6, 16, 16), np.uint8)), r"`images` has shape \(6, 16, 16\)"),
    "images-rgba": (_replace("images", np.ones((6, 16, 16, 4), np.uint8)), r"expected \(N, H, W, 3\)"),
    "images-float": (_replace("images", np.ones((6, 16, 16, 3), np.float32)), r"dtype float32; expected uint8"),
    "ans-group": (_replace("ans", "group"), r"has a group `ans` where a dataset belongs"),
    "dangling-link": (_dangling, r"`ans` cannot be opened \(.*\); check that the path names the file you meant"),
    "damaged-chunk": (_corrupt_chunk, r"dataset `images` cannot be read \(.*\): the file is damaged"),
    "truncated": (_truncate, r"is not a readable HDF5 file \(.*truncated.*\): it is truncated, damaged or not HDF5"),
    "names-scalar": (_attr("E,S0"), r"attribute class_names is <U4 of shape \(\); expected a list"),
    "names-twice": (_attr(["E", "E", "S0"]), r"class_names \['E', 'E', 'S0'\] has an empty or repeated name"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_hdf5_is_one_line_naming_the_file(tmp_path, case):
    mutate, message = BAD_FILES[case]
    path = _h5(tmp_path / "bad.h5", np.arange(6) % 3, compression="gzip")
    registry.load(str(path))  # sound before the damage
    mutate(path)
    with pytest.raises(GalmorphError) as err:
        registry.load(str(path))
    text = _one_line(err)
    assert str(path) in text and err.match(message)
    assert "delete" not in text  # 5. the user's own file: say what is wrong, never "delete it"
    assert path.exists()


# --- 5. who may be told to delete a file ------------------------------------------------------


def test_only_galmorphs_own_cache_is_called_deletable(tmp_path, monkeypatch):
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "cache"))
    theirs = tmp_path / "mine.h5"
    ours = tmp_path / "cache" / "nair2010" / "nair2010.h5"
    ours.parent.mkdir(parents=True)
    for path in (theirs, ours):
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(GalmorphError) as err:
        hdf5.read(theirs)
    text = _one_line(err)
    assert text.startswith(f"{theirs} is not a readable HDF5 file (") and "delete" not in text
    assert text.endswith("): it is truncated, damaged or not HDF5 at all; check that the path names the file you "
                         "meant and that it was written or copied completely")
    with pytest.raises(GalmorphError, match=r"it is in galmorph's cache \(.*cache\): delete it and galmorph downloads "
                                            r"or builds it again$"):
        hdf5.read(ours)


# --- 3. schemes files -------------------------------------------------------------------------


@pytest.mark.parametrize("body,message", [
    ("- small\n- pair\n", r"schemes file .* must map dataset keys to schemes, not be a list"),
    ("small: [pair]\n", r"schemes file .*: entry 'small' is a list, not a mapping"),
    ("small: pair\n", r"entry 'small' is a string, not a mapping"),
    ("small:\n  schemes: [pair]\n", r"small.schemes is a list, not a mapping of scheme names"),
    ("small:\n  default: 3\n", r"small.default is a int; name a scheme"),
    ("small:\n  schemes:\n    pair: [0, 1]\n", r"scheme small/pair needs `classes:`"),
    ("small:\n  schemes:\n    pair:\n      classes:\n        a: 0\n        b: [1]\n",
     r"scheme small/pair, class a: 0 is not a list of integer labels; write it like \[0, 3\]"),
    ("small:\n  schemes:\n    pair:\n      classes:\n        a: [0, x]\n        b: [1]\n",
     r"class a: \[0, 'x'\] is not a list of integer labels"),
    ("small:\n  schemes:\n    pair:\n      classes:\n        a: [0.5]\n        b: [1]\n",
     r"class a: \[0.5\] is not a list of integer labels"),
])
def test_malformed_schemes_file(tmp_path, small_h5, body, message):
    user = tmp_path / "schemes.yaml"
    user.write_text(body)
    with pytest.raises(GalmorphError) as err:
        registry.load(str(small_h5), "pair", schemes_file=str(user))
    _one_line(err)
    assert err.match(message)


# --- 4. max_images means at most --------------------------------------------------------------


def test_max_images_below_three_per_class_is_refused():
    labels = np.repeat(np.arange(4), 50)
    with pytest.raises(GalmorphError) as err:
        splits.stratified_subset(labels, 5)
    assert _one_line(err) == ("max_images 5 is below the 12 images a stratified split of 4 classes needs "
                              "(3 per class); use at least 12 or 0 for all")


def test_max_images_is_never_exceeded():
    labels = np.repeat(np.arange(4), [170, 20, 6, 4])
    for max_images in range(12, labels.size + 5):
        keep = splits.stratified_subset(labels, max_images)
        assert keep.size == min(max_images, labels.size), max_images
        assert (np.bincount(labels[keep], minlength=4) >= 3).all(), max_images


# --- 3. settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,message", [
    ({"seed": -1}, "seed must be 0 or more, got -1"),
    ({"seed": -7}, "seed must be 0 or more, got -7"),
    ({"experiment": ""}, "experiment must name an MLflow experiment, got ''; pass e.g. --experiment galmorph"),
    ({"experiment": "  "}, "experiment must name an MLflow experiment, got '  '; pass e.g. --experiment galmorph"),
])
def test_bad_settings_are_refused_by_validate(changes, message):
    with pytest.raises(GalmorphError) as err:
        TrainConfig(**changes).validate()
    assert _one_line(err) == message


# --- every one of them through `galmorph train` -----------------------------------------------


def _cli_cases(tmp_path):
    """(argv, expected message part, whether a run is started first) per bad input."""
    good = make_h5(tmp_path / "good.h5", n=24, n_classes=4)
    floats = _h5(tmp_path / "float.h5", np.r_[np.arange(11) % 3, 2.5])
    gz = _h5(tmp_path / "damaged.h5", np.arange(6) % 3, compression="gzip")
    _corrupt_chunk(gz)
    short = _h5(tmp_path / "short.h5", np.arange(6) % 3)
    _replace("ans", np.zeros(5, np.uint8))(short)
    rgba = _h5(tmp_path / "rgba.h5", np.arange(6) % 3)
    _replace("images", np.ones((6, 16, 16, 4), np.uint8))(rgba)
    grey = _h5(tmp_path / "grey.h5", np.arange(6) % 3)
    _replace("images", np.ones((6, 16, 16), np.uint8))(grey)
    entry = tmp_path / "entry.yaml"
    entry.write_text("good: [pair]\n")
    toplist = tmp_path / "toplist.yaml"
    toplist.write_text("- good\n")
    prepared = prepare(TrainConfig(dataset=str(good)))
    leaky = splits.Split(prepared.split.train, np.append(prepared.split.val, prepared.split.train[0]),
                         prepared.split.test, 0, 0.15, 0.15)
    split_file = splits.save(leaky, prepared.data.rows, tmp_path / "splits.json", dataset_digest=prepared.data.digest())
    notints = tmp_path / "notints.yaml"
    notints.write_text("good:\n  schemes:\n    pair:\n      classes:\n        a: 0\n        b: [1]\n")
    return {
        "seed": (["--seed", "-1"], "seed must be 0 or more, got -1", True),
        "experiment": (["--experiment", ""], "experiment must name an MLflow experiment, got ''", False),
        "scheme-entry": (["--dataset", str(good), "--schemes-file", str(entry)], "entry 'good' is a list", True),
        "scheme-top": (["--dataset", str(good), "--schemes-file", str(toplist)], "must map dataset keys", True),
        "scheme-ints": (["--dataset", str(good), "--schemes-file", str(notints)], "is not a list of integer labels",
                        True),
        "float-label": (["--dataset", str(floats)], "non-integer labels 2.5", True),
        "damaged-hdf5": (["--dataset", str(gz)], "dataset `images` cannot be read", True),
        "ans-length": (["--dataset", str(short)], "`ans` has shape (5,) but there are 6 images", True),
        "images-rgba": (["--dataset", str(rgba)], "`images` has shape (6, 16, 16, 4); expected (N, H, W, 3)", True),
        "images-3d": (["--dataset", str(grey)], "`images` has shape (6, 16, 16); expected (N, H, W, 3)", True),
        "split-leak": (["--dataset", str(good), "--split-file", str(split_file)], "are in both train and val", True),
        "max-images": (["--dataset", str(good), "--max-images", "5"],
                       "max_images 5 is below the 12 images a stratified split of 4 classes needs", True),
    }


def test_every_bad_input_is_one_line_through_the_cli(tmp_path, tracking_uri, capsys):
    import mlflow

    client = mlflow.MlflowClient()
    framework_before = "torch" in sys.modules
    for name, (argv, message, started) in _cli_cases(tmp_path).items():
        experiment = f"bad-{name}"
        full = ["train", "--backend", "torch", "--synthetic-n", "40", "--experiment", experiment, *argv]
        code = cli.main(full)  # an uncaught exception (a traceback) fails the test here
        stderr = capsys.readouterr().err
        err = [line for line in stderr.splitlines() if line.startswith("galmorph: error: ")]  # MLflow logs INFO lines too
        assert code == 2, name
        assert len(err) == 1 and message in err[0] and "Traceback" not in stderr, (name, stderr)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if started:  # the run records why it failed, before any training
            (run,) = runs
            assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == err[0].removeprefix(
                "galmorph: error: "), name
            assert "train_loss" not in run.data.metrics
        else:
            assert runs == [], name
    assert framework_before or "torch" not in sys.modules  # every error came before the backend's import


@pytest.mark.parametrize("case", ["seed", "experiment", "damaged-hdf5", "split-leak"])
def test_the_galmorph_command_exits_2_without_a_traceback(tmp_path, tracking_uri, case):
    argv, message, _ = _cli_cases(tmp_path)[case]
    proc = subprocess.run([sys.executable, "-m", "galmorph", "train", "--backend", "torch", "--synthetic-n", "40",
                           "--experiment", "bad", *argv], capture_output=True, text=True, timeout=300,
                          env=child_env(), cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("galmorph: error: ")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
