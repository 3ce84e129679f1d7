"""Temperature scaling and the expected calibration error (galmorph.core.calibration)."""

import numpy as np
import pytest

from galmorph.core import calibration


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n=20000, k=5, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z); the 'network' says softmax(sharpen * z): T = sharpen undoes it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, k))
    truth = _softmax(z)
    y = np.array([rng.choice(k, p=row) for row in truth])
    return y, _softmax(sharpen * z).astype(np.float32)


def test_fitted_temperature_undoes_known_overconfidence_and_keeps_the_predicted_class():
    y, p = _overconfident()
    t = calibration.fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.05)
    q = calibration.apply_temperature(p, t)
    assert np.array_equal(q.argmax(axis=1), p.argmax(axis=1))
    assert np.allclose(q.sum(axis=1), 1.0)
    m = calibration.calibration_metrics(y, p, t)
    assert m["test_ece"] < 0.02 < m["test_ece_uncalibrated"] / 2
    assert m["test_log_loss"] < m["test_log_loss_uncalibrated"]


def test_temperature_one_and_nothing_to_fit_leave_probabilities_alone():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert np.array_equal(calibration.apply_temperature(p, 1.0), p)
    assert calibration.fit_temperature(np.zeros(0, int), np.zeros((0, 3))) == 1.0
    # a probability a float32 softmax rounded to 0 still scales (log of 0 would be -inf)
    q = calibration.apply_temperature(np.array([[1.0, 0.0]], np.float32), 2.0)
    assert np.isfinite(q).all() and q[0, 0] > 0.99


def test_ece_in_equal_width_bins_by_hand():
    # 10 images at confidence 0.9, all right: |1 - 0.9|; 10 at 0.8 (another bin), half right: |0.5 - 0.8|
    p = np.array([[0.9, 0.1]] * 10 + [[0.8, 0.2]] * 10)
    y = np.array([0] * 10 + [0] * 5 + [1] * 5)
    r = calibration.reliability(y, p)
    assert calibration.ECE_BINS == 15 and len(r["count"]) == 15 and r["count"].sum() == 20
    assert r["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)
    assert calibration.ece(y[:10], p[:10]) == pytest.approx(0.1)
