"""galmorph models on Apache Spark (`pip install 'galmorph[spark]'`; Spark needs Java 17 or later).

- `session(master)`: a SparkSession on `master`: `local[N]`, `spark://HOST:PORT` (a standalone
  cluster), `yarn`, `k8s://...`, or `databricks` (the session of the Databricks cluster the
  process runs on). `check(master)` says, before Spark starts, where PySpark or Java is missing
  or a spark:// master does not answer: one GalmorphError line.
- `model_udf(spark, model_uri, info)`: the logged model as a Spark UDF: mlflow.pyfunc.spark_udf
  in the current Python environment (env_manager="local": every executor must have galmorph and
  the model's framework installed), returning a struct of the model's output columns
  (`result_type`: p_<class>..., predicted, confidence, and p_<class>_std for an ensemble).
- Image columns: the UDF takes one array of integers per image, the model's uint8 (side, side,
  3) image flattened in C order (MLflow's spark_udf reshapes it to the model's tensor signature;
  the model checks the range 0-255). `image_udf(geometry)` makes that column, with the reason
  where a file cannot be read, from a column of JPEG, PNG or FITS paths readable on the
  executors, read and resized as `galmorph predict` reads them (galmorph.inference.inputs).
- `describe(reference)`: a model's URI and ModelInfo from its MLmodel file alone (a driver
  needs no network); `loaded_model(folder)`: the model loaded once per Python worker;
  `job(master)`: a failed Spark job as one GalmorphError line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd  # at module level: pandas_udf reads the type hints of image_udf's function

from galmorph.core.errors import GalmorphError
from galmorph.inference import inputs

IMAGE_TYPE = "array<smallint>"  # a uint8 image flattened; smallint: half the bytes of int through Arrow
CONNECT_TIMEOUT = 10.0  # seconds a spark:// master has to accept a connection
JAVA_HINT = "install a Java runtime, 17 or later (apt-get install default-jre-headless), or set JAVA_HOME"


def java() -> str | None:
    """The java Spark would start: $JAVA_HOME/bin/java where JAVA_HOME is set (as Spark's
    launcher does), else java on PATH; None where there is none."""
    home = os.environ.get("JAVA_HOME")
    if home:
        path = Path(home) / "bin" / "java"
        return str(path) if path.is_file() else None
    return shutil.which("java")


def check(master: str) -> None:
    """GalmorphError where `master` cannot work from here: PySpark not installed, no Java, or a
    spark:// master none of whose hosts accepts a connection within CONNECT_TIMEOUT."""
    if not master.strip():
        raise GalmorphError("--spark needs a master: local[2], spark://HOST:PORT or databricks")
    if importlib.util.find_spec("pyspark") is None:
        raise GalmorphError(f"--spark {master} needs PySpark, which is not installed; pip install 'galmorph[spark]'")
    if java() is None:
        where = f"at JAVA_HOME={os.environ['JAVA_HOME']}" if os.environ.get("JAVA_HOME") else "on PATH"
        raise GalmorphError(f"--spark {master}: Spark needs Java and there is no java {where}; {JAVA_HINT}")
    if master.startswith("spark://"):
        problems = []
        for address in master[len("spark://"):].split(","):
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
                return
            except (OSError, ValueError) as exc:
                problems.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
        raise GalmorphError(f"--spark {master}: the Spark master cannot be reached ({'; '.join(problems)}); "
                            "start it (docs/scale.md: On a Spark cluster) or correct the URL")


def session(master: str, app_name: str = "galmorph", *, progress: bool = False, conf: dict | None = None):
    """A SparkSession on `master` (see the module docstring), after `check(master)`; one that is
    already running in this process is reused (SparkSession.builder.getOrCreate). Local masters
    listen on 127.0.0.1 only. Its Python workers import the installed galmorph before any model
(galmorph.inference.spark_daemon): a session made elsewhere should set the same
`spark.python.daemon.module`. GalmorphError where Spark does not start."""
    check(master)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master != "databricks":
        builder = builder.master(master)
    settings = {"spark.ui.showConsoleProgress": str(progress).lower(),
                "spark.python.daemon.module": "galmorph.inference.spark_daemon"}
    if master.startswith("local"):
        settings |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    if master == "databricks":  # the cluster's driver is running: its log level is set as it is
        settings["spark.log.level"] = "ERROR"
    else:  # this process starts the driver's JVM: its log lines, start-up included, are errors only
        settings["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={_quiet_log4j()}"
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # py4j and PySpark raise their own types, with multi-line messages
        raise GalmorphError(f"--spark {master}: Spark did not start ({inputs.one_line(exc)})") from None


_LOG4J = """# galmorph predict --spark: Spark's driver shows errors only, on stderr. The root level stays
# warn, the level Spark gives PySpark's driver (a shell to Spark), so that Spark does not print
# its "Setting default log level" lines; the console's filter drops the warnings.
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.filter.errors.type = ThresholdFilter
appender.console.filter.errors.level = error
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _quiet_log4j() -> Path:
    """A log4j2 configuration for the driver's JVM (errors only), written once into the cache."""
    from galmorph.core.io import atomic_write
    from galmorph.core.paths import cache_dir

    path = cache_dir() / "spark" / "log4j2-errors.properties"
    if not path.is_file() or path.read_text() != _LOG4J:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(_LOG4J))
    return path


def describe(reference: str):
    """(model URI, ModelInfo) of the galmorph model `reference` names (as galmorph predict takes
    it), read from its MLmodel file alone: the driver of a Spark job loads no network.
    GalmorphError where there is no such model or it is not galmorph's."""
    import mlflow

    from galmorph.inference.model import info_of
    from galmorph.inference.resolve import resolve

    found = resolve(reference, flag="model")
    try:
        mlmodel = mlflow.models.Model.load(found.model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise GalmorphError(f"model {reference}: {found.model_uri} cannot be read as an MLflow model "
                            f"({inputs.one_line(exc)})") from None
    return found.model_uri, info_of(mlmodel, reference)


@contextlib.contextmanager
def job(master: str):
    """Spark's failures inside the block (a task that failed on every try, an executor without
    galmorph, a file it cannot read or write) as one GalmorphError line: the error that the
    Python worker or the JVM raised, whose whole trace Spark has logged already."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        named = [k for k, ln in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception): ", ln)]
        reason = lines[named[-1] if named else 0:]  # the last error raised, up to the JVM's trace
        end = next((k for k, ln in enumerate(reason) if ln.startswith(("at ", "SQLSTATE", "JVM stacktrace"))), None)
        text = inputs.one_line(" ".join(reason[:end])) or type(exc).__name__
        raise GalmorphError(f"--spark {master}: the Spark job failed: {text}") from None


def result_type(info) -> str:
    """The Spark DDL struct of the model's output columns, as its signature names them."""
    from galmorph.inference.pyfunc import signature

    return ", ".join(f"`{spec.name}` {spec.type.name}" for spec in signature(info).outputs.inputs)


def params(tta="false", calibrated: bool = True) -> dict:
    """The pyfunc's inference params (galmorph.inference.pyfunc.PARAMS) for `galmorph predict`'s
    --tta (false, true or dihedral) and calibration."""
    from galmorph.data import augment

    name = augment.tta_name(tta)
    augment.tta_views(name)  # an unknown setting: GalmorphError
    return {"tta": name != "false", "tta_views": "dihedral" if name == "dihedral" else "paper40",
            "calibrated": bool(calibrated)}


def model_udf(spark, model_uri: str, info, *, tta="false", calibrated: bool = True):
    """mlflow.pyfunc.spark_udf of the galmorph model at `model_uri` (ModelInfo `info`): call it
    on an image column (module docstring); it returns the struct `result_type(info)`."""
    import mlflow.pyfunc

    from galmorph.tracking.artifacts import no_progress_bar

    with no_progress_bar():
        return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type(info), env_manager="local",
                                       params=params(tta, calibrated))


def text(value) -> str | None:
    """An id as text (an .h5 file's ids are numbers or bytes)."""
    if value is None:
        return None
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


_LOADED: dict = {}  # model folder -> LoadedModel: one load per Python worker, whatever its tasks


def loaded_model(folder: str):
    """The galmorph model in the local MLflow model `folder` (galmorph.inference.model.LoadedModel),
    loaded once per process."""
    if folder not in _LOADED:
        import mlflow.pyfunc

        from galmorph.inference.model import LoadedModel, info_of

        pyfunc = mlflow.pyfunc.load_model(folder)
        _LOADED[folder] = LoadedModel(pyfunc, info_of(pyfunc, folder), folder)
    return _LOADED[folder]


def image_udf(geometry: inputs.Geometry, fits_reader=None):
    """A Spark UDF: a column of image paths (JPEG, PNG, or FITS where `fits_reader` is given:
    galmorph.inference.fits.reader) -> struct<image: IMAGE_TYPE, error: string>, the image
    cropped and resized by `geometry` as galmorph predict does; image null where the file cannot
    be read, error saying why."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(f"image {IMAGE_TYPE}, error string")
    def read(paths: pd.Series) -> pd.DataFrame:
        entries = list(inputs.FileSource([Path(p) for p in paths.fillna("")], geometry, fits_reader))
        return pd.DataFrame({"image": [None if e.image is None else e.image.reshape(-1).astype(np.int16)
                                       for e in entries],
                             "error": [None if e.image is not None else e.error or "unreadable" for e in entries]})

    return read
