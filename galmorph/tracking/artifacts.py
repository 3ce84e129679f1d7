"""The evaluation artifacts every run that classifies the test split logs, written once for
training runs and hierarchical classifiers alike: confusion matrices, the classification
report, the per-galaxy predictions and the split."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from galmorph.core.metrics import metric_safe
from galmorph.data import splits
from galmorph.tracking import figures


def write_evaluation(out: Path, report: dict, title: str) -> None:
    """confusion_matrix.png (recall), confusion_matrix_counts.png and classification_report.json."""
    figures.confusion_matrix(report, out / "confusion_matrix.png", normalised=True, title=f"{title}: recall")
    figures.confusion_matrix(report, out / "confusion_matrix_counts.png", normalised=False, title=f"{title}: counts")
    (out / "classification_report.json").write_text(json.dumps(report, indent=2))


def prediction_columns(data, split, proba: np.ndarray) -> dict:
    """One row per test galaxy: its row in the file, galaxy id, true and predicted class,
    and p_<class> for every class (columns of predictions.csv; callers may add more)."""
    rows = data.rows[split.test]
    pred = proba.argmax(axis=1)
    return {
        "row": rows,
        "galaxy": data.groups[split.test] if data.groups is not None else rows,
        "true": [data.class_names[i] for i in data.labels[split.test]],
        "predicted": [data.class_names[i] for i in pred],
        "correct": pred == data.labels[split.test],
        **{f"p_{metric_safe(n)}": proba[:, i] for i, n in enumerate(data.class_names)},
    }


def write_predictions(out: Path, columns: dict) -> None:
    import pandas as pd

    pd.DataFrame(columns).to_csv(out / "predictions.csv", index=False)


def write_split(out: Path, config, data, split, digest: str) -> None:
    """splits.json: the rows of each split, with what they were made from (reusable by split_file)."""
    splits.save(split, data.rows, out / "splits.json", dataset_digest=digest,
                extra={"dataset": config.dataset, "scheme": data.scheme, "max_images": config.max_images})


PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def no_progress_bar():
    """No MLflow download progress bar among a run's console lines while this lasts."""
    was = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if was is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = was
