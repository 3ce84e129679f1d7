"""Streamed training data (`--stream`): the same batches, metrics and digest as in memory when
one window covers the file; a resumed streamed run ends where an uninterrupted one ends; a
damaged chunk met in mid-epoch fails the run naming the rows and the file, and the run resumes
once the file is fixed; badly chunked files are warned about with the convert command."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_h5

from galmorph.config import TrainConfig
from galmorph.core import checkpoints
from galmorph.core.errors import GalmorphError
from galmorph.data import augment, registry, stream

BACKENDS = [pytest.param("torch", marks=pytest.mark.torch), pytest.param("keras", marks=pytest.mark.keras)]
FINAL = ("test_accuracy", "test_log_loss", "test_macro_f1", "best_val_loss", "best_val_accuracy")


def _config(h5, backend: str, **kw) -> TrainConfig:
    settings = {"model": "c2", "width": 0.25, "dense_units": 16, "epochs": 1, "batch_size": 16, "threads": 1,
                "seed": 3, "quiet": True, "log_model": False, "experiment": "stream", "checkpoints": False}
    return TrainConfig(dataset=str(h5), backend=backend, **{**settings, **kw})


@pytest.fixture
def chunked_h5(tmp_path):
    """64 images of 48 px, gzip-compressed in chunks of 8 rows: 8 blocks."""
    return make_h5(tmp_path / "chunked.h5", n=64, size=48, compression="gzip", chunk_rows=8)


def test_streamed_batches_digest_and_plans_equal_in_memory_ones_with_one_window(chunked_h5):
    mem = registry.load(str(chunked_h5), stream_images="false")
    lazy = registry.load(str(chunked_h5), stream_images="true")
    assert lazy.meta == {"stream": True, "stream_reason": "--stream true"} and mem.meta["stream"] is False
    assert isinstance(lazy.images, stream.Images) and lazy.images.source.block == 8
    assert lazy.digest() == mem.digest()
    keep = np.arange(3, 64, 2)
    assert lazy.subset(keep).digest() == mem.subset(keep).digest()
    for mode in augment.MODES:
        a, b = (augment.TrainStream(augment.BatchMaker(d.images, [0, 2]), keep, d.labels, mode=mode, batch_size=16,
                                    seed=5) for d in (mem, lazy))
        for epoch in range(2):
            pa, pb = a.plan(epoch), b.plan(epoch)
            assert np.array_equal(pa[0], pb[0]) and np.array_equal(pa[1], pb[1]), mode
            for i in range(len(a)):
                (xa, ya), (xb, yb) = a.get(pa, i), b.get(pb, i)
                assert np.array_equal(xa, xb) and np.array_equal(ya, yb), mode


def test_a_windowed_plan_visits_each_image_once_reading_a_window_of_blocks_at_a_time():
    blocks = np.repeat(np.arange(10), 8)  # 80 images in 10 blocks: windows of 24, 24, 24 and 8 images
    for mode in ("random", "paper40"):
        pos, views = augment.windowed_plan(blocks, mode, epoch=2, seed=1, window=3)
        per = augment.N_VIEWS if mode == "paper40" else 1
        assert np.array_equal(np.sort(pos), np.repeat(np.arange(blocks.size), per)) and views.shape[0] == pos.size
        # consecutive runs of the plan stay inside windows of 3 blocks, 4 windows in all
        windows = [set(blocks[pos[i : i + 24 * per]]) for i in range(0, pos.size, 24 * per)]
        assert len(windows) == 4 and all(len(w) <= 3 for w in windows)
        assert set().union(*windows) == set(range(10))
        again = augment.windowed_plan(blocks, mode, epoch=2, seed=1, window=3)
        other = augment.windowed_plan(blocks, mode, epoch=3, seed=1, window=3)
        assert np.array_equal(pos, again[0]) and not np.array_equal(pos, other[0])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_and_in_memory_training_give_identical_metrics(backend, chunked_h5, tracking_uri):
    import mlflow

    from galmorph.workflows import train

    ids = []
    results = [train.run(_config(chunked_h5, backend, stream=s), started=ids.append) for s in ("false", "true")]
    for key in FINAL:
        assert results[0][key] == results[1][key], key
    params = [mlflow.MlflowClient().get_run(i).data.params for i in ids]
    assert [p["stream_resolved"] for p in params] == ["false", "true"]
    assert params[0]["dataset_digest"] == params[1]["dataset_digest"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_chunk_in_mid_epoch_fails_the_run_which_resumes_once_the_file_is_fixed(
        backend, chunked_h5, tracking_uri, tmp_path, monkeypatch):
    """Windows of one block (three cached), so epoch 2 reads every block again: block 0 is
    damaged once epoch 1's checkpoint is in place, and met in epoch 2. The run streams by
    `--stream auto`, and its resume streams too though auto would now choose memory."""
    import h5py
    import mlflow

    from galmorph.workflows import train

    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stream, "WINDOW_BYTES", 1)
    monkeypatch.setattr(stream, "MIN_WINDOW_BLOCKS", 1)
    whole = train.run(_config(chunked_h5, backend, stream="true", epochs=2, run_name="whole"))
    with h5py.File(chunked_h5, "r") as fh:
        info = fh["images"].id.get_chunk_info(0)
    with open(chunked_h5, "rb") as fh:
        fh.seek(info.byte_offset)
        good = fh.read(info.size)

    def damage(done, path):
        if done == "rename" and path.name == "epoch-0000":
            with open(chunked_h5, "r+b") as fh:
                fh.seek(info.byte_offset)
                fh.write(b"\0" * info.size)

    monkeypatch.setattr(checkpoints, "after_file_op", damage)
    ids = []
    monkeypatch.setattr(stream, "AUTO_FRACTION", 0.0)  # --stream auto streams this run ...
    with pytest.raises(GalmorphError, match=r"chunked\.h5: rows 0-7 of `images` cannot be read .*--resume") as err:
        train.run(_config(chunked_h5, backend, stream="auto", epochs=2, checkpoints=True), started=ids.append)
    monkeypatch.setattr(stream, "AUTO_FRACTION", 1e9)  # ... and would not stream now: the resume keeps the run's choice
    monkeypatch.setattr(checkpoints, "after_file_op", None)
    client = mlflow.MlflowClient()
    run = client.get_run(ids[0])
    assert run.info.status == "FAILED" and str(chunked_h5) in run.data.tags["failure_reason"]
    assert [m.step for m in client.get_metric_history(ids[0], "val_loss")] == [0]
    with pytest.raises(GalmorphError, match="rows 0-7"):  # still damaged: loading it fails alike
        registry.load(str(chunked_h5), stream_images="true").digest()

    with open(chunked_h5, "r+b") as fh:  # fixed
        fh.seek(info.byte_offset)
        fh.write(good)
    resumed = train.run(TrainConfig(resume=ids[0], quiet=True))
    assert client.get_run(ids[0]).info.status == "FINISHED"
    for key in FINAL:
        assert resumed[key] == whole[key], (key, str(err.value))


def test_one_row_chunks_are_warned_about_with_the_convert_command(tmp_path, capsys):
    h5 = make_h5(tmp_path / "rows.h5", n=20, size=32, chunk_rows=1)
    registry.load(str(h5), stream_images="true")
    err = capsys.readouterr().err
    assert err.startswith("galmorph: warning: ") and "one image per HDF5 chunk" in err
    assert f"galmorph data convert {h5} --output NEW.h5" in err
    registry.load(str(h5), stream_images="false")  # read whole: no warning
    assert capsys.readouterr().err == ""
    whole = stream.chunking_problem("big.h5", (5000, 64, 64, 3), (5000, 64, 64, 3))
    assert "all 5000 images in one HDF5 chunk" in whole and "galmorph data convert big.h5" in whole
    assert stream.chunking_problem("ok.h5", (5000, 64, 64, 3), (128, 64, 64, 3)) is None


def test_auto_streams_only_what_does_not_fit(chunked_h5):
    streamed, why = stream.decide("auto", chunked_h5)
    assert not streamed and why.startswith("--stream auto: 0 MB decoded <= 25% of ")
    assert 0 < stream.available_memory()
    with pytest.raises(GalmorphError, match="stream must be one of auto, true, false"):
        stream.decide("maybe", chunked_h5)


def test_data_parallel_replicas_are_told_the_stream_decision(chunked_h5, monkeypatch):
    """`--stream auto` is decided once, by the launching process, for every replica."""
    from galmorph.workflows.prepare import with_stream_decided

    config = TrainConfig(dataset=str(chunked_h5), stream="auto")
    monkeypatch.setattr(stream, "AUTO_FRACTION", 0.0)
    assert with_stream_decided(config).stream == "true"
    monkeypatch.setattr(stream, "AUTO_FRACTION", 1e9)
    assert with_stream_decided(config).stream == "false"
    assert "--stream false" in " ".join(with_stream_decided(config).to_argv())
    assert with_stream_decided(config.replace(stream="true")).stream == "true"
