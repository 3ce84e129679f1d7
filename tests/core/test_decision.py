"""The decision rule (galmorph.core.decision): chosen on validation data, applied by the model."""

import numpy as np
import pytest

from galmorph.core import decision
from galmorph.inference.model import Prediction, table


def _skewed(n_common: int, n_rare: int, seed: int):
    """A network that under-calls its rare class 2: true rare galaxies get p(rare) ~ 0.4 beside
    a frequent class's 0.5, so the plain argmax names the rare class for none of them."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_common + [1] * n_common + [2] * n_rare)
    p = np.full((y.size, 3), 0.05)
    p[y == 0, 0], p[y == 1, 1] = 0.9, 0.9
    rare = y == 2
    p[rare, rng.integers(0, 2, rare.sum())] = 0.5
    p[rare, 2] = 0.4 + rng.uniform(-0.02, 0.02, rare.sum())
    return y, p / p.sum(axis=1, keepdims=True)


def test_prior_correction_is_chosen_on_validation_when_it_finds_the_rare_class():
    y_val, p_val = _skewed(200, 12, seed=0)
    prior = np.array([0.48, 0.48, 0.04])
    rule = decision.choose(y_val, p_val, prior)
    assert rule.alpha > 0
    assert np.mean(rule.predict(p_val)[y_val == 2] == 2) == 1.0  # every rare galaxy found
    assert np.mean(decision.decide(p_val)[y_val == 2] == 2) == 0.0  # the argmax found none
    y_test, p_test = _skewed(150, 9, seed=1)  # unseen galaxies: the chosen rule carries over
    assert np.mean(rule.predict(p_test)[y_test == 2] == 2) == 1.0


def test_plain_argmax_is_kept_when_a_correction_would_cost_accuracy():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    p = np.full((400, 2), 0.5)
    p[np.arange(400), y] = 0.55  # right, but barely: a correction flips frequent-class calls
    p[np.arange(400), 1 - y] = 0.45
    rule = decision.choose(y, p, np.array([0.9, 0.1]))
    assert rule.alpha == 0.0 and np.allclose(rule.weights, 1.0)


def test_weights_are_the_prior_to_the_minus_alpha_normalised():
    w = decision.weights_for(np.array([0.8, 0.2]), 1.0)
    assert w[1] / w[0] == pytest.approx(4.0) and np.mean(w) == pytest.approx(1.0)
    absent = decision.weights_for(np.array([0.5, 0.5, 0.0]), 1.0)  # a class absent from training: raw weight 1
    assert absent[2] / absent[0] == pytest.approx(0.5) and all(np.isfinite(absent))


def test_the_model_table_names_the_rules_class_and_its_own_probability():
    proba = np.array([[0.55, 0.45], [0.9, 0.1]])
    plain = table(Prediction(proba), ["E", "Sp"])
    ruled = table(Prediction(proba, weights=decision.weights_for(np.array([0.8, 0.2]), 1.0)), ["E", "Sp"])
    assert plain["predicted"].tolist() == ["E", "E"]
    assert ruled["predicted"].tolist() == ["Sp", "E"]
    assert ruled["confidence"].tolist() == [0.45, 0.9]  # the named class's probability, not the top one
    assert ruled["p_Sp"].tolist() == plain["p_Sp"].tolist()  # probabilities untouched
