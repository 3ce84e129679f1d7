"""The Python daemon of galmorph's Spark sessions (`spark.python.daemon.module`): PySpark's own,
with the installed galmorph package imported first, so that its workers run the galmorph that
the driver runs. Without it, a worker whose first task loads a logged model imports `galmorph`
from the model's copy of it (MLflow puts a model's code_paths first on sys.path), and modules
that copy lacks or holds in an older version are then what the worker reads images with.

Only the package itself is imported: no thread may start before the daemon forks its workers.
"""

import galmorph  # noqa: F401

if __name__ == "__main__":
    from pyspark.daemon import manager

    manager()
