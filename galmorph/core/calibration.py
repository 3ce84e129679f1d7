"""Probability calibration shared by both backends: temperature scaling and its measures.

Temperature scaling (Guo et al. 2017) divides a network's log-probabilities by one scalar T
fitted on the validation split: softmax(log p / T) (= softmax(logits / T) for a softmax
network). T > 1 softens over-confident probabilities; the predicted class (the argmax) never
changes, so accuracy stays as it was. T = 1 is the network as trained ("uncalibrated").

The expected calibration error (ECE) is measured in ECE_BINS equal-width bins of confidence
(the top probability) over [0, 1]: sum over bins of (bin share) x |accuracy - mean confidence|.
"""

from __future__ import annotations

import numpy as np

from galmorph.core.metrics import cross_entropy

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017 use 15)
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))  # the search interval of log T
_TINY = np.finfo(np.float32).tiny  # a float32 softmax can round a probability to 0: log needs > 0


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row by row, float64 (N, K); T = 1 returns the probabilities unchanged."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0 or proba.size == 0:
        return proba
    z = np.log(np.clip(proba, _TINY, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The T minimising the mean negative log-likelihood of softmax(log p / T): a bounded 1-D search over log T in
    LOG_T_BOUNDS (scipy's minimize_scalar). 1.0 when there is nothing to fit on."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=np.intp)
    if y_true.size == 0:
        return 1.0
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _TINY, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(y_true.size), y_true]))

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    # never worse than the network as trained (the search is local on a flat or odd surface)
    return float(np.exp(result.x)) if result.fun <= nll(0.0) else 1.0


def reliability(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin (equal width over [0, 1]): count, mean confidence, accuracy (NaN where
    empty); and the ECE over them."""
    y_true = np.asarray(y_true, dtype=np.intp)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1) if proba.size else np.zeros(0)
    correct = proba.argmax(axis=1) == y_true if proba.size else np.zeros(0, bool)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(float), minlength=bins) / count
    n = max(int(y_true.size), 1)
    ece = float(np.nansum(count / n * np.abs(accuracy - mean_conf))) if y_true.size else float("nan")
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "confidence": mean_conf,
            "accuracy": accuracy, "ece": ece}


def ece(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error in `bins` equal-width confidence bins."""
    return reliability(y_true, proba, bins)["ece"]


def calibration_metrics(y_true: np.ndarray, proba: np.ndarray, temperature: float, prefix: str = "test") -> dict:
    """<prefix>_ece and <prefix>_log_loss (metrics.cross_entropy, as every log loss galmorph
    logs) with `temperature` applied, and the same of the uncalibrated probabilities as
    <prefix>_ece_uncalibrated, <prefix>_log_loss_uncalibrated."""
    calibrated = apply_temperature(proba, temperature)
    return {f"{prefix}_ece": ece(y_true, calibrated), f"{prefix}_log_loss": cross_entropy(y_true, calibrated),
            f"{prefix}_ece_uncalibrated": ece(y_true, proba),
            f"{prefix}_log_loss_uncalibrated": cross_entropy(y_true, proba)}
