"""The logged model on Apache Spark, local mode on loopback only: mlflow.pyfunc.spark_udf over a
DataFrame of image arrays and of image paths, and `galmorph predict --spark local[2]`, each
against `galmorph predict` on the same galaxies (probabilities to 1e-6, the same rows, columns
and errors); the bad inputs of issue 20 (a master that cannot be reached, no Java). One
SparkSession for every test (the JVM takes 10-20 s to start), one tiny torch model."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from conftest import make_h5, train_tiny_model

import galmorph
from galmorph import cli
from galmorph.core.errors import GalmorphError
from galmorph.inference import spark as engine

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]
needs_java = pytest.mark.skipif(engine.java() is None, reason="Spark needs Java (17 or later) and there is none "
                                "here; `.ci/run` installs default-jre-headless")


@pytest.fixture(scope="session")
def spark():
    """local[2] on 127.0.0.1, no UI, 2 shuffle partitions; the session galmorph predict --spark
    reuses in this process (SparkSession.builder.getOrCreate)."""
    pytest.importorskip("pyspark", reason="pip install 'galmorph[spark]'")
    session = engine.session("local[2]", "galmorph tests", conf={"spark.ui.enabled": "false",
                                                                "spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run id, 40-image .h5 file with ids, ra, dec; folder of PNGs, tracking URI) of a tiny
    logged torch model (1 epoch, width 0.25, 48 px)."""
    tmp = tmp_path_factory.mktemp("spark")
    h5 = make_h5(tmp / "train.h5", n=40, size=48, n_classes=3, id=np.arange(1000, 1040),
                 ra=np.linspace(150, 151, 40), dec=np.linspace(2, 3, 40))
    run_id, uri = train_tiny_model(h5, "spark")
    with h5py.File(h5) as f:
        images = f["images"][:8]
    folder = tmp / "pngs"
    folder.mkdir()
    for k in range(6):
        Image.fromarray(images[k]).save(folder / f"g{k}.png")
    Image.fromarray(np.kron(images[6], np.ones((2, 2, 1), np.uint8))).save(folder / "g6_big.png")  # resized
    Image.fromarray(np.full((48, 48), 90, np.uint8), "L").save(folder / "gray.png")  # an error
    (folder / "empty.png").write_bytes(b"")
    return run_id, h5, folder, uri


@pytest.fixture
def model(trained, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained[3])
    mlflow.set_tracking_uri(trained[3])
    return trained


@pytest.fixture(scope="module")
def reference(trained):
    """galmorph predict (one process) on the .h5 file and the folder: (output rows, errors)."""
    import mlflow

    run_id, h5, folder, uri = trained
    out = h5.with_name("reference.csv")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        assert cli.main(["predict", run_id, str(h5), str(folder), "--output", str(out), "--quiet"]) == 1  # 2 bad
    with open(out, newline="") as fh, open(h5.with_name("reference.errors.csv"), newline="") as errors:
        return list(csv.DictReader(fh)), list(csv.DictReader(errors))


def _proba(rows, names) -> np.ndarray:
    return np.array([[float(r[n]) for n in names] for r in rows])


@needs_java
def test_spark_udf_over_image_arrays_and_paths_answers_like_galmorph_predict(spark, model, reference):
    import pandas as pd
    from pyspark.sql import functions as F

    from galmorph.inference import inputs
    from galmorph.inference.model import load

    run_id, h5, folder, _ = model
    reference, ref_errors = reference
    loaded = load(run_id)
    names = [c for c in reference[0] if c.startswith("p_")]
    predict = engine.model_udf(spark, loaded.uri, loaded.info)

    # image arrays as a user has them: int arrays, each image flattened (C order)
    with h5py.File(h5) as f:
        images = f["images"][:]
    arrays = spark.createDataFrame(pd.DataFrame({"n": np.arange(len(images)),
                                                 "image": [im.reshape(-1).astype(np.int32) for im in images]}))
    got = arrays.withColumn("p", predict("image")).select("n", "p.*").toPandas().sort_values("n")
    assert list(got.columns) == ["n", *names, "predicted", "confidence"]
    np.testing.assert_allclose(got[names].to_numpy(), _proba(reference[:40], names), rtol=0, atol=1e-6)
    assert list(got["predicted"]) == [r["predicted"] for r in reference[:40]]

    # a job that fails in the workers (arrays of the wrong size): one line, the workers' error
    wrong = spark.createDataFrame(pd.DataFrame({"image": [np.zeros(12, np.int32)]}))
    with pytest.raises(GalmorphError, match=r"^--spark local\[2\]: the Spark job failed: \S*(Error|Exception): ") as bad:
        with engine.job("local[2]"):
            wrong.withColumn("p", predict("image")).collect()
    assert "\n" not in str(bad.value) and "MlflowException: Failed to enforce schema" in str(bad.value)

    # the workers, having loaded the model, still import the installed galmorph, not the model's copy of it
    where = spark.range(4, numPartitions=2).mapInPandas(
        lambda batches: (pd.DataFrame({"file": [galmorph.__file__]}) for _ in batches), "file string").toPandas()
    assert set(where["file"]) == {galmorph.__file__}

    # image paths, read on the executors as galmorph predict reads them; unreadable ones say why
    paths = sorted(str(p) for p in folder.iterdir())
    read = engine.image_udf(inputs.Geometry(loaded.info.image_side))
    frame = spark.createDataFrame(pd.DataFrame({"path": paths})).withColumn("im", read("path")).cache()
    failed = frame.where(F.col("im.image").isNull()).select("path", "im.error").toPandas().sort_values("path")
    assert [(r["source"], r["error"]) for r in ref_errors] == list(zip(failed["path"], failed["error"]))
    ok = frame.where(F.col("im.image").isNotNull()).withColumn("p", predict("im.image"))
    got = ok.select("path", "p.*").toPandas().sort_values("path")
    by_source = {r["source"]: r for r in reference}
    assert len(got) == 7 and set(got["path"]) <= set(by_source)
    np.testing.assert_allclose(got[names].to_numpy(), _proba([by_source[p] for p in got["path"]], names),
                               rtol=0, atol=1e-6)


@needs_java
def test_predict_spark_writes_the_parquet_of_galmorph_predict(spark, model, reference, tmp_path, capsys):
    import pandas as pd

    run_id, h5, folder, _ = model
    reference, ref_errors = reference
    out = tmp_path / "spark" / "p.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an old output, replaced whole")
    argv = ["predict", run_id, str(h5), str(folder), "--spark", "local[2]", "--output", str(out), "--batch-size", "7",
            "--quiet"]
    assert cli.main(argv) == 1  # the two unreadable files
    assert f"{out}: 47 galaxies predicted; 2 failed" in capsys.readouterr().out
    got = pd.read_parquet(out)
    assert list(got.columns) == list(reference[0])  # source, id, ra, dec, p_..., predicted, confidence
    assert list(got["source"]) == [r["source"] for r in reference]  # input order
    assert list(got["id"].iloc[:40]) == [r["id"] for r in reference[:40]] and got["id"].iloc[40:].isna().all()
    names = [c for c in got.columns if c.startswith("p_")]
    np.testing.assert_allclose(got[names].to_numpy(), _proba(reference, names), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["ra"].iloc[:40], [float(r["ra"]) for r in reference[:40]])
    assert list(got["predicted"]) == [r["predicted"] for r in reference]
    with open(tmp_path / "spark" / "p.errors.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == ref_errors
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.errors.csv", "p.parquet"]  # no temporary left


def _refused(argv, capsys, folder) -> str:
    before = sorted(folder.iterdir())
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("galmorph: error: ")
    assert sorted(folder.iterdir()) == before  # nothing written
    return err[0]


def test_predict_spark_refuses_bad_input_in_one_line_writing_nothing(model, tmp_path, capsys, closed_port,
                                                                    monkeypatch):
    run_id, h5, _, _ = model
    out = tmp_path / "p.parquet"
    argv = ["predict", run_id, str(h5), "--output", str(out), "--quiet", "--spark"]
    if engine.java() is not None:
        err = _refused(argv + [f"spark://127.0.0.1:{closed_port}"], capsys, tmp_path)
        assert f"the Spark master cannot be reached (127.0.0.1:{closed_port}: Connection refused)" in err
        assert "start it (docs/scale.md: On a Spark cluster) or correct the URL" in err
        (tmp_path / "cat.csv").write_text("id,ra,dec,scale\nc0,150.1,2.2,0.4\n")
        err = _refused(argv[:2] + [str(tmp_path / "cat.csv")] + argv[3:] + ["local[2]"], capsys, tmp_path)
        assert "--spark reads images, FITS and .h5 files, not catalogues" in err
    err = _refused(argv[:3] + ["--output", str(tmp_path / "p.csv"), "--spark", "local[2]"], capsys, tmp_path)
    assert "--spark writes Parquet: give --output NAME.parquet" in err
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("JAVA_HOME", "")
    err = _refused(argv + ["local[2]"], capsys, tmp_path)
    assert "Spark needs Java and there is no java on PATH; install a Java runtime" in err
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    err = _refused(argv + ["local[2]"], capsys, tmp_path)
    assert f"there is no java at JAVA_HOME={tmp_path}" in err

