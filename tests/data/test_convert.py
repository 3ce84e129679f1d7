"""`galmorph data convert`: a folder of images + labels CSV, or a badly chunked .h5, becomes a
chunked, compressed Galaxy10-format file with its checksum; unmatched labels and images go to
the errors file; an interrupted convert continues where it stopped."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_h5

from galmorph import cli
from galmorph.data import integrity, registry


def _folder(tmp_path, n=12, side=40):
    from PIL import Image

    src = tmp_path / "cutouts"
    (src / "night2").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"night2/g{i:02d}.png" if i % 2 else f"g{i:02d}.jpg"
        img = rng.integers(0, 255, (side + i % 3, side, 3), dtype=np.uint8)  # not all square
        Image.fromarray(img).save(src / name)
        rows.append((name, ("spiral", "elliptical", "merger")[i % 3], 1000 + i))
    rows[3] = ("missing.png", "spiral", 9)  # a label without its image, and night2/g03.png without a label
    pd.DataFrame(rows, columns=["file", "label", "id"]).to_csv(src / "labels.csv", index=False)
    return src


def test_a_folder_and_labels_csv_become_a_chunked_compressed_file(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "out.h5"
    code = cli.main(["data", "convert", str(src), "--output", str(out), "--size", "32", "--chunk-rows", "4", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 1  # some were skipped
    errors = pd.read_csv(tmp_path / "out.errors.csv")
    assert sorted(errors["error"]) == ["no image missing.png in " + str(src), "no label in labels.csv"]
    assert errors.loc[errors["error"] == "no label in labels.csv", "source"].item() == "night2/g03.png"
    assert f"{out}: 11 images of 32 px in 3 classes, chunks of 4, gzip" in stdout and "2 skipped" in stdout
    with h5py.File(out) as fh:
        assert fh["images"].chunks == (4, 32, 32, 3) and fh["images"].compression == "gzip"
        assert list(fh.attrs["class_names"]) == ["elliptical", "merger", "spiral"]
        assert fh["id"][:3].tolist() == [1000, 1001, 1002]
    assert integrity.check(out) is None  # its SHA256 recorded beside it
    data = registry.load(str(out), stream_images="true")
    assert len(data) == 11 and data.image_size == 32 and data.images.source.block == 4
    assert not list(tmp_path.glob("*.part*"))


def test_an_unreadable_image_is_left_out_and_an_interrupted_folder_convert_continues(tmp_path, capsys, monkeypatch):
    """Each image is decoded once, as its chunk is written: g04.jpg cannot be read, so it is
    listed and the rows after it move up, labels and ids with them; a run interrupted in its
    third block of reads continues to the same rows and errors."""
    from galmorph.inference import inputs

    src = _folder(tmp_path)
    (src / "g04.jpg").write_bytes(b"not a jpeg")
    args = ["data", "convert", str(src), "--size", "32", "--chunk-rows", "4", "--quiet"]
    whole = tmp_path / "whole.h5"
    assert cli.main([*args, "--output", str(whole)]) == 1
    assert "whole.h5: 10 images of 32 px in 3 classes" in capsys.readouterr().out
    errors = pd.read_csv(tmp_path / "whole.errors.csv")
    assert len(errors) == 3 and errors.loc[errors["source"] == "g04.jpg", "error"].item()
    geometry = inputs.Geometry(32)
    with h5py.File(whole) as fh:
        ids = fh["id"][:].tolist()
        assert ids == [1000, 1001, 1002] + list(range(1005, 1012))  # 1003: no image; 1004: unreadable
        assert fh["images"].shape == (10, 32, 32, 3) and fh["ans"][:].tolist() == [[2, 0, 1][(i - 1000) % 3] for i in ids]
        for row, i in enumerate(ids):
            name = f"night2/g{i - 1000:02d}.png" if i % 2 else f"g{i - 1000:02d}.jpg"
            assert np.array_equal(fh["images"][row], inputs.read_image(src / name, geometry)), name

    real, calls = inputs.read_image, []

    def interrupted(path, geo):
        calls.append(path)
        if len(calls) == 9:  # the third chunk's first image
            raise KeyboardInterrupt
        return real(path, geo)

    out = tmp_path / "out.h5"
    monkeypatch.setattr(inputs, "read_image", interrupted)
    assert cli.main([*args, "--output", str(out)]) == 130  # as Ctrl-C ends it
    assert "galmorph: interrupted" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "out.h5.part").is_file()
    calls.clear()
    monkeypatch.setattr(inputs, "read_image", lambda path, geo: calls.append(path) or real(path, geo))
    assert cli.main([*args, "--output", str(out)]) == 1
    # read in blocks of 4 of the 11 labelled images: the first whole chunk written held candidates 0-4 (3 is
    # g04.jpg), so the rerun reads candidates 5-10 again, not the first five
    assert [p.name for p in calls] == ["g06.jpg", "g07.png", "g08.jpg", "g09.png", "g10.jpg", "g11.png"]
    assert pd.read_csv(tmp_path / "out.errors.csv").equals(errors)
    assert registry.load(str(out)).digest() == registry.load(str(whole)).digest()
    with h5py.File(out) as fh, h5py.File(whole) as ref:
        assert all(np.array_equal(fh[k][:], ref[k][:]) for k in ("images", "ans", "id"))
    assert not list(tmp_path.glob("*.part*"))


def test_nothing_left_is_an_error_and_writes_no_file(tmp_path, capsys):
    src = _folder(tmp_path)
    pd.DataFrame({"file": ["nope.png"], "label": ["spiral"]}).to_csv(src / "other.csv", index=False)
    out = tmp_path / "out.h5"
    code = cli.main(["data", "convert", str(src), "--output", str(out), "--labels", str(src / "other.csv"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("galmorph: error: nothing to convert in ")
    assert not out.exists() and not list(tmp_path.glob("*.part*"))
    pd.DataFrame({"name": ["g00.jpg"]}).to_csv(src / "bad.csv", index=False)
    assert cli.main(["data", "convert", str(src), "--output", str(out), "--labels", str(src / "bad.csv")]) == 2
    assert "lacks the column(s) file, label" in capsys.readouterr().err


def test_a_one_row_chunked_h5_is_rewritten_alike_and_an_interrupted_convert_continues(tmp_path, capsys):
    """The source's rows 24-31 are damaged: convert stops there; then rows 0-7 are damaged and
    24-31 fixed: the rerun reads from row 24 on only, and its file equals an uninterrupted one."""
    src = make_h5(tmp_path / "rows.h5", n=64, size=32, chunk_rows=8, compression="gzip", id=np.arange(64))
    whole = tmp_path / "whole.h5"
    assert cli.main(["data", "convert", str(src), "--output", str(whole), "--chunk-rows", "8", "--quiet"]) == 0
    assert registry.load(str(whole)).digest() == registry.load(str(src)).digest()
    with h5py.File(whole) as fh:
        assert fh["images"].chunks == (8, 32, 32, 3) and fh["id"][:].tolist() == list(range(64))

    def chunk(i):
        with h5py.File(src) as fh:
            info = fh["images"].id.get_chunk_info(i)
        return info.byte_offset, info.size

    def swap(i, data=None):
        offset, size = chunk(i)
        with open(src, "r+b") as fh:
            fh.seek(offset)
            old = fh.read(size)
            fh.seek(offset)
            fh.write(data if data is not None else b"\0" * size)
        return old

    good3 = swap(3)
    out = tmp_path / "out.h5"
    assert cli.main(["data", "convert", str(src), "--output", str(out), "--chunk-rows", "8", "--quiet"]) == 2
    assert "rows 24-31 of `images` cannot be read" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "out.h5.part").is_file()
    swap(0)
    swap(3, good3)
    assert cli.main(["data", "convert", str(src), "--output", str(out), "--chunk-rows", "8", "--quiet"]) == 0
    assert integrity.sha256_file(out) == integrity.sha256_file(whole)
    assert not list(tmp_path.glob("*.part*"))


def test_bad_chunking_of_a_copy_is_fixed(tmp_path, capsys):
    src = make_h5(tmp_path / "one.h5", n=20, size=32, chunk_rows=1)
    shutil.copy(src, tmp_path / "copy.h5")
    out = tmp_path / "fixed.h5"
    assert cli.main(["data", "convert", str(tmp_path / "copy.h5"), "--output", str(out), "--quiet"]) == 0
    capsys.readouterr()
    registry.load(str(out), stream_images="true")
    assert capsys.readouterr().err == ""  # no chunking warning


@pytest.mark.slow
def test_the_mlproject_entry_point_converts(tmp_path):
    """`mlflow run . -e data_convert` rewrites a one-row-chunked file as `galmorph data convert` does."""
    import subprocess
    import sys

    from conftest import REPO, child_env

    src = make_h5(tmp_path / "one.h5", n=20, size=32, chunk_rows=1)
    out = tmp_path / "out.h5"
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "data_convert", "--env-manager",
                           "local", "-P", f"source={src}", "-P", f"output={out}", "-P", "chunk_rows=8", "-P",
                           "quiet=true"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=child_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(out) as fh:
        assert fh["images"].chunks == (8, 32, 32, 3)
    assert registry.load(str(out)).digest() == registry.load(str(src)).digest()
