"""Class weights of the loss (core.training.class_weight): the scale of the loss is kept."""

import numpy as np
import pytest

from galmorph.core import training


@pytest.mark.parametrize("mode", ["balanced", "sqrt"])
def test_weights_keep_the_loss_scale_and_favour_rare_classes(mode):
    labels = np.array([0] * 400 + [1] * 100 + [2] * 25)
    w = training.class_weight(labels, 4, training.CLASS_WEIGHT_POWER[mode])
    assert w[3] == 0.0  # absent from the training split
    assert sum(w[k] * c for k, c in enumerate((400, 100, 25))) == pytest.approx(labels.size)
    power = training.CLASS_WEIGHT_POWER[mode]
    assert w[1] / w[0] == pytest.approx(4.0 ** power)
    assert w[2] / w[1] == pytest.approx(4.0 ** power)


def test_balanced_is_sklearns_balanced():
    labels = np.array([0, 0, 0, 1])
    assert training.class_weight(labels, 2, 1.0) == pytest.approx((4 / (2 * 3), 4 / (2 * 1)))
