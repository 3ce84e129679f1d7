"""The decision rule: which class a model names, given its class probabilities.

A network trained on imbalanced classes rarely names a rare class: its probabilities carry
the training prior, and the plain argmax favours frequent classes. The rule here is the
argmax of p_k / prior_k ** alpha, prior_k being the class's share of the training split:
alpha 0 is the plain argmax (best accuracy when test galaxies come in the training
proportions), alpha 1 the argmax of the prior-corrected probabilities (the Bayes rule for
balanced accuracy: every class equally likely).

`choose` picks alpha on the validation split only, never the test split: among ALPHAS, the
one with the highest validation balanced accuracy whose validation accuracy stays within
ACCURACY_TOLERANCE of the plain argmax's (the rare class found without giving up more than
that of overall accuracy); ties go to the smaller alpha. The logged model applies the chosen
weights prior ** -alpha to name its `predicted` class; its probabilities stay as calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
ACCURACY_TOLERANCE = 0.01  # validation accuracy a rule may give up against the plain argmax


@dataclass(frozen=True)
class Rule:
    """alpha and the per-class weights prior ** -alpha (ones for alpha 0), normalised to mean 1."""

    alpha: float
    weights: tuple[float, ...]

    def predict(self, proba: np.ndarray) -> np.ndarray:
        return decide(proba, self.weights)


def weights_for(prior: np.ndarray, alpha: float) -> tuple[float, ...]:
    """prior ** -alpha, normalised to mean 1 (a class absent from training keeps weight 1)."""
    prior = np.asarray(prior, dtype=np.float64)
    w = np.where(prior > 0, np.clip(prior, 1e-12, None) ** -alpha, 1.0)
    return tuple(float(v) for v in w / w.mean())


def decide(proba: np.ndarray, weights=None) -> np.ndarray:
    """The named class of each row of `proba` (N, K): argmax of proba x weights (plain argmax
    without weights)."""
    proba = np.asarray(proba, dtype=np.float64)
    return (proba if weights is None else proba * np.asarray(weights, dtype=np.float64)).argmax(axis=1)


def reweighted(proba: np.ndarray, weights) -> np.ndarray:
    """proba x weights, rows renormalised: scores whose argmax is the rule's decision (for
    galmorph.core.metrics.evaluate's class metrics; not calibrated probabilities)."""
    scores = np.asarray(proba, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    return scores / np.clip(scores.sum(axis=1, keepdims=True), 1e-300, None)


def _balanced(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    recalls = [np.mean(pred[y == c] == c) for c in range(k) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def choose(y_val: np.ndarray, proba_val: np.ndarray, prior: np.ndarray) -> Rule:
    """The rule of ALPHAS chosen on the validation split (module docstring)."""
    y_val = np.asarray(y_val, dtype=np.intp)
    k = np.asarray(prior).size
    best, best_key = Rule(0.0, weights_for(prior, 0.0)), None
    if y_val.size == 0:
        return best
    plain = float(np.mean(decide(proba_val) == y_val))
    for alpha in ALPHAS:
        rule = Rule(alpha, weights_for(prior, alpha))
        pred = rule.predict(proba_val)
        if np.mean(pred == y_val) < plain - ACCURACY_TOLERANCE - 1e-12:
            continue
        key = _balanced(y_val, pred, k)
        if best_key is None or key > best_key + 1e-12:
            best, best_key = rule, key
    return best
