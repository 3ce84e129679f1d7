"""`galmorph predict MODEL INPUT... --spark MASTER --output predictions.parquet`: galmorph
predict with the galaxies spread over a Spark cluster (galmorph.inference.spark).

The driver (this process) reads the model's description (its MLmodel file: no network is
loaded here), lists the inputs (JPEG, PNG and FITS files and folders of them, Galaxy10-format
.h5 files; catalogues, whose cutouts one process fetches, are for galmorph predict without
--spark), cuts them into tasks of --batch-size galaxies in input order and ships the model
to the executors (SparkContext.addFile). Each executor's Python worker loads the pyfunc once
(the same object mlflow.pyfunc.spark_udf loads: galmorph.inference.spark.loaded_model), and
per task reads the galaxies with galmorph predict's own sources (galmorph.inference.inputs:
same crop, resize, FITS stretch) and predicts them as one batch, with LoadedModel.predict as
galmorph predict does; the images never leave the worker, only the output rows do. Spark
writes those as Parquet parts in a temporary folder beside the output,
`.<output name>.spark-<random>`, which the driver joins in input order into the one Parquet
file --output (a temporary name, then renamed) and removes. The inputs and that folder must
be at the same path on every executor (local mode: this machine; a cluster: a shared file
system).

Writes what galmorph predict writes: the output (`source`, `id` as text, `ra`, `dec` where
the input gives them, `p_<class>`..., `predicted`, `confidence`, and `p_<class>_std` for an
ensemble; one row per predicted galaxy, in input order) and `<stem>.errors.csv` beside it.
Same exit codes; a master that cannot be reached, no Java or no PySpark: one `galmorph:
error:` line, exit 2, nothing written. Not resumable: a rerun starts again.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write
from galmorph.inference import inputs, parts
from galmorph.inference import spark as engine
from galmorph.workflows.predict import PredictConfig, Summary, errors_path, sources_for

PARTITIONS_PER_CORE = 4  # tasks are grouped into this many partitions per core: balance vs model loads
META = parts.OPTIONAL_META  # kept only where some row has them, as in galmorph predict


def _tasks(sources: list, size: int) -> list[tuple]:
    """(first galaxy's index in the whole input, kind, path, name, start, stop, files, names)
    per `size` galaxies of every source, in input order: paths made absolute for the executors
    (whose working folders differ), names as galmorph predict writes them."""
    tasks, offset = [], 0
    for source in sources:
        n = len(source)
        for start in range(0, n, size):
            stop = min(start + size, n)
            if source.kind == "h5":
                tasks.append((offset + start, "h5", str(source.path.resolve()), str(source.path), start, stop, [], []))
            else:
                files = source.files[start:stop]
                tasks.append((offset + start, "images", "", "", 0, stop - start, [str(f.resolve()) for f in files],
                              [str(f) for f in files]))
        offset += n
    return tasks


TASK_SCHEMA = ("first long, kind string, path string, name string, start long, stop long, files array<string>, "
               "names array<string>")


def _entries(task, geometry, fits_reader):
    """The galaxies of one task (_tasks), read by galmorph predict's sources, named as
    galmorph predict names them."""
    if task.kind == "h5":
        source = inputs.H5Source(Path(task.path), geometry)
        entries = itertools.islice(source.entries(task.start), task.stop - task.start)
        names = {}
    else:
        entries = inputs.FileSource([Path(f) for f in task.files], geometry, fits_reader).entries()
        names = dict(zip(task.files, task.names))
    for entry in entries:  # an .h5 file's rows are <path>[row], or <path> where it cannot be read
        entry.source = names[entry.source] if names else task.name + entry.source[len(task.path):]
        yield entry


def _predictor(model_file: str, geometry, fits_reader, tta, calibrated: bool, errors, present):
    """The executors' mapInPandas function: tasks -> output rows of their galaxies, predicted
    by the model in SparkFiles `model_file` a task (a batch) at a time. The galaxies that
    cannot be read go to the accumulator `errors` ({index in the input: (source, error)}:
    merging is idempotent, so a task Spark retries counts once), the meta columns seen to
    `present`."""

    def predict(batches):
        import pandas as pd
        from pyspark import SparkFiles

        model = engine.loaded_model(SparkFiles.get(model_file))
        for tasks in batches:
            for task in tasks.itertuples(index=False):
                entries = list(_entries(task, geometry, fits_reader))
                bad = {task.first + k: (e.source, e.error or "unreadable") for k, e in enumerate(entries)
                       if e.image is None}
                if bad:
                    errors.add(bad)
                good = [e for e in entries if e.image is not None]
                if not good:
                    continue
                meta = pd.DataFrame({"source": [e.source for e in good],
                                     "id": [engine.text(e.meta.get("id")) for e in good],
                                     "ra": [e.meta.get("ra") for e in good], "dec": [e.meta.get("dec") for e in good]},
                                    dtype=object)
                present.add({c for c in META if meta[c].notna().any()})
                found = model.predict(np.stack([e.image for e in good]), tta=tta, calibrated=calibrated)
                yield pd.concat([meta, model.table(found)], axis=1)

    return predict


def _accumulators(sc):
    from pyspark.accumulators import AccumulatorParam

    class Merge(AccumulatorParam):
        def __init__(self, empty):
            self.empty = empty

        def zero(self, value):
            return type(self.empty)()

        def addInPlace(self, a, b):
            a.update(b)
            return a

    return sc.accumulator({}, Merge({})), sc.accumulator(set(), Merge(set()))


def _ship_model(spark, uri: str, tmp: Path) -> str:
    """Download the model at `uri` under `tmp` and add it, zipped, to the Spark job's archives
    (every executor fetches and unpacks it before its first task; a cluster takes no folder);
    its SparkFiles name, unique per run."""
    import mlflow

    from galmorph.tracking.artifacts import no_progress_bar

    with no_progress_bar():
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp / "download"))
    archive = shutil.make_archive(str(tmp / f"galmorph-model-{uuid.uuid4().hex[:12]}"), "zip", root_dir=local)
    spark.sparkContext.addArchive(archive)
    return Path(archive).name


def _join_parts(folder: Path, output: Path, drop) -> int:
    """Spark's Parquet parts in `folder`, in name (= partition = input) order, as the one
    Parquet file `output` (atomically) without the columns `drop`; its number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = sorted(folder.glob("part-*.parquet"))
    if not found:
        raise GalmorphError(f"Spark wrote no Parquet part to {folder}")
    schema = pq.read_schema(found[0])
    return parts.join_parquet(found, output, pa.schema([schema.field(c) for c in schema.names if c not in drop]))


def run(config: PredictConfig, *, progress: bool | None = None) -> Summary:
    """Predict every galaxy of `config.inputs` on the Spark master `config.spark` and write the
    Parquet output and the errors CSV (module docstring). GalmorphError, before anything is
    written, for everything galmorph predict refuses, an output not named .parquet, catalogue
    inputs, no PySpark or Java, or a master that cannot be reached."""
    from galmorph.inference import fits

    started = time.perf_counter()
    config.validate()
    output = Path(config.output).expanduser()
    if output.suffix.lower() != ".parquet":
        raise GalmorphError(f"--spark writes Parquet: give --output NAME.parquet, not {config.output}")
    if progress is None:
        progress = not config.quiet and sys.stderr.isatty()
    engine.check(config.spark)  # before the model: seconds, where Spark's own failure takes a minute
    uri, info = engine.describe(config.model)
    loaded = time.perf_counter()
    sources = sources_for(config, info, progress)
    catalogues = [str(s.path) for s in sources if s.kind not in ("h5", "images")]
    if catalogues:
        raise GalmorphError(f"--spark reads images, FITS and .h5 files, not catalogues ({catalogues[0]}): their "
                            "cutouts are fetched by one process; predict them without --spark")
    # PySpark 4 warns on every call under pandas 3, which these calls were tested with (docs/scale.md)
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    from pyspark.sql import SparkSession

    own = config.spark != "databricks" and SparkSession.getActiveSession() is None  # stopped here once done
    spark = engine.session(config.spark, "galmorph predict", progress=progress)
    try:
        tasks = _tasks(sources, config.batch_size)
        cores = spark.sparkContext.defaultParallelism
        table = spark.sparkContext.parallelize(tasks, max(1, min(len(tasks), PARTITIONS_PER_CORE * cores)))
        frame = spark.createDataFrame(table, TASK_SCHEMA)
        errors, present = _accumulators(spark.sparkContext)
        folder = output.with_name(f".{output.name}.spark-{uuid.uuid4().hex[:12]}")
        try:
            with tempfile.TemporaryDirectory(prefix="galmorph-spark-") as tmp:
                with engine.job(config.spark):
                    model_file = _ship_model(spark, uri, Path(tmp))
                predict = _predictor(model_file, inputs.Geometry(info.image_side, config.crop),
                                     fits.reader(config.stretch(), len(info.band)), config.tta,
                                     not config.uncalibrated, errors, present)
                schema = "source string, id string, ra double, dec double, " + engine.result_type(info)
                with engine.job(config.spark):
                    frame.mapInPandas(predict, schema).write.parquet(folder.resolve().as_uri())
            n_ok = _join_parts(folder, output, [c for c in META if c not in present.value])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        errors_file = errors_path(output)
        failed = errors.value
        atomic_write(errors_file, lambda fh: parts.errors_writer(fh).writerows(failed[k] for k in sorted(failed)))
        n_failed = len(failed)
    finally:
        if own:
            spark.stop()
    done = time.perf_counter()
    return Summary(n_ok, n_failed, output, errors_file, done - started, done - loaded, float("nan"))
