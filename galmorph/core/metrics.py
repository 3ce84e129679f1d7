"""Evaluation shared by both backends: one function from probabilities to every metric."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def cross_entropy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean categorical cross-entropy of predicted probabilities (clipped like Keras, 1e-7)."""
    p = np.clip(proba[np.arange(y_true.size), y_true], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == y_true))


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names) -> dict:
    """Accuracy, balanced accuracy, macro F1, log loss, per-class precision/recall/F1/support
    and raw + row-normalised confusion matrices (rows = true class, in `class_names` order)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    class_names = list(class_names)
    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "balanced_accuracy": float(np.mean(rec[present])),
        "macro_f1": float(np.mean(f1[present])),
        "log_loss": cross_entropy(y_true, proba),
        "n": int(y_true.size),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "class_names": class_names,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": cm_norm.round(6).tolist(),
    }


def flat_metrics(report: dict, prefix: str) -> dict[str, float]:
    """MLflow metric names for an `evaluate` report: <prefix>_accuracy, <prefix>_recall_<class>, ..."""
    out = {f"{prefix}_{k}": report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")}
    for name, values in report["per_class"].items():
        safe = metric_safe(name)
        for k in ("precision", "recall", "f1"):
            out[f"{prefix}_{k}_{safe}"] = values[k]
    return out


def metric_safe(name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, _ - . / space)."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
