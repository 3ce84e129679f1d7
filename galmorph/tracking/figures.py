"""Figures logged with every run (matplotlib figures of their own, written atomically).

galmorph draws on `matplotlib.figure.Figure` objects that pyplot never sees (`subplots`),
so it neither chooses a backend nor leaves figures open: in a notebook, the session's
backend (the inline one) stays as it was and shows the user's plots, and none of
galmorph's. Only code that draws through pyplot itself (optuna's plots) asks for `pyplot()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from galmorph.core.io import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """`(figure, axes)` like pyplot.subplots, on a Figure outside pyplot (no backend, nothing to close)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def pyplot():
    """matplotlib.pyplot, on the Agg backend (files only) unless pyplot was imported before:
    then the session chose its backend, and it is left alone."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write `fig` atomically (format from the suffix); a pyplot figure is closed."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        if "matplotlib.pyplot" in sys.modules:  # a no-op for figures of `subplots`
            sys.modules["matplotlib.pyplot"].close(fig)
    return path


def confusion_matrix(report: dict, path: Path, normalised: bool = True, title: str = "") -> Path:
    """Confusion matrix with true classes as rows, labelled in the report's class order."""
    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix_normalised" if normalised else "confusion_matrix"], dtype=float)
    fig, ax = subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalised else max(cm.max(), 1))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = (1 if normalised else cm.max()) / 2
    for i in range(len(names)):
        for j in range(len(names)):
            text = f"{cm[i, j]:.2f}" if normalised else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color="white" if cm[i, j] > thresh else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalised else "confusion matrix (counts)"))
    return save(fig, path)


def learning_curves(history, path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [r.epoch + 1 for r in history]
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3.8))
    a1.plot(epochs, [r.train_loss for r in history], "o-", label="train")
    a1.plot(epochs, [r.val_loss for r in history], "s-", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.legend()
    a2.plot(epochs, [r.train_accuracy for r in history], "o-", label="train")
    a2.plot(epochs, [r.val_accuracy for r in history], "s-", label="validation")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    if title:
        fig.suptitle(title)
    return save(fig, path)


def reliability_diagram(y_true, before, after, path: Path, title: str = "") -> Path:
    """Accuracy against confidence in galmorph.core.calibration's equal-width bins, of the
    uncalibrated (`before`) and temperature-scaled (`after`) probabilities, each with its ECE;
    below, how many images fall in each bin."""
    from galmorph.core import calibration

    fig, (top, bottom) = subplots(2, 1, figsize=(5.2, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for proba, name, marker in ((before, "uncalibrated", "o-"), (after, "temperature-scaled", "s-")):
        r = calibration.reliability(y_true, proba)
        centres = (r["edges"][:-1] + r["edges"][1:]) / 2
        filled = r["count"] > 0
        top.plot(r["confidence"][filled], r["accuracy"][filled], marker, label=f"{name} (ECE {r['ece']:.4f})")
        bottom.bar(centres, r["count"], width=1 / len(centres), alpha=0.45, label=name)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel(f"confidence (top probability, {calibration.ECE_BINS} equal-width bins)")
    bottom.set_ylabel("images")
    top.set_title(title or "reliability diagram", fontsize=9)
    return save(fig, path)
