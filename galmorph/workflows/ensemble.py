"""The ensemble of a multiseed group (galmorph.workflows.multiseed): its members' calibrated
probabilities averaged, evaluated on the test split they share, and logged as one model.

Members are the seeds' training runs, trained on one split (the first seed's; the seeds then
vary the initial weights and the augmentation order), so that their test galaxies are the
same and none of them trained on another's test galaxy. The ensemble's test probabilities are
computed from the members' logged predictions.csv (uncalibrated p_<class>) and temperatures:
mean over members of softmax(log p / T_member), exactly what the logged ensemble model
(galmorph.inference.pyfunc.log_ensemble, calibrated=True) computes from the images.

Logged on the parent run: ensemble_test_accuracy, ensemble_test_balanced_accuracy,
ensemble_test_macro_f1, ensemble_test_ece, ensemble_test_log_loss (beside the members'
test_*_mean and test_*_std), ensemble_predictions.csv (p_<class>, p_<class>_std, true),
ensemble_reliability_diagram.png, the model (artifact path "model", tag model_uri).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from galmorph import tracking
from galmorph.core import calibration, metrics
from galmorph.core.errors import GalmorphError
from galmorph.tracking import figures, tags
from galmorph.tracking.artifacts import no_progress_bar

PREFIX = "ensemble_test"


def member_probabilities(client, runs) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(calibrated probabilities (M, N, K), uncalibrated (M, N, K), class names, true labels (N,))
    of the member `runs` on their shared test split, aligned by file row."""
    import pandas as pd

    frames, temps = [], []
    with tempfile.TemporaryDirectory(prefix="galmorph-ensemble-") as tmp, no_progress_bar():
        for run in runs:
            path = client.download_artifacts(run.info.run_id, "predictions.csv", str(Path(tmp) / run.info.run_id))
            frames.append(pd.read_csv(path).sort_values("row", kind="stable").reset_index(drop=True))
            temps.append(float(run.data.metrics.get("temperature", 1.0)))
        report = client.download_artifacts(runs[0].info.run_id, "classification_report.json", str(Path(tmp) / "r"))
        classes = json.loads(Path(report).read_text())["class_names"]  # a class name may hold a comma
    rows = frames[0]["row"].to_numpy()
    if any(not np.array_equal(f["row"].to_numpy(), rows) for f in frames[1:]):
        raise GalmorphError("the seeds' test splits differ, so they make no ensemble; run multiseed with --ensemble "
                            "true (one shared split) or pass --split-file")
    names = [c for c in frames[0].columns if c.startswith("p_")]
    raw = np.stack([f[names].to_numpy(dtype=np.float64) for f in frames])
    cal = np.stack([calibration.apply_temperature(p, t) for p, t in zip(raw, temps)])
    y = np.array([classes.index(c) for c in frames[0]["true"].astype(str)])
    return cal, raw, classes, y


def evaluate(client, runs) -> tuple[dict, "pandas.DataFrame", tuple]:  # noqa: F821
    """The ensemble's metrics (PREFIX_*), its prediction table and (y, uncalibrated mean,
    calibrated mean) for the reliability diagram."""
    from galmorph.inference.model import Prediction, table

    cal, raw, classes, y = member_probabilities(client, runs)
    mean, std = cal.mean(axis=0), cal.std(axis=0)
    report = metrics.evaluate(y, mean, classes)
    out = {f"{PREFIX}_{k}": report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    out.update({f"{PREFIX}_ece": calibration.ece(y, mean), f"{PREFIX}_log_loss": metrics.cross_entropy(y, mean),
                "ensemble_members": float(len(runs))})
    frame = table(Prediction(mean, std), classes)
    frame.insert(0, "true", [classes[i] for i in y])
    return out, frame, (y, raw.mean(axis=0), mean)


def log(client, runs, parent_run_id: str, log_model: bool = True) -> dict:
    """Evaluate the ensemble of member `runs` and log it on the active (parent) run; its metrics."""
    import mlflow

    found, frame, (y, raw, mean) = evaluate(client, runs)
    mlflow.log_metrics(found)
    with tracking.artifact_dir() as out:
        frame.to_csv(out / "ensemble_predictions.csv", index=False)
        figures.reliability_diagram(y, raw, mean, out / "ensemble_reliability_diagram.png",
                                    title=f"ensemble of {len(runs)} seeds: test split (uncalibrated = "
                                          "members' raw probabilities averaged)")
    if log_model:
        from galmorph.inference import pyfunc

        uris = [r.data.tags.get(tags.MODEL_URI) for r in runs]
        if all(uris):
            mlflow.set_tag(tags.MODEL_URI, pyfunc.log_ensemble(uris, parent_run_id, [r.info.run_id for r in runs]))
    return found
