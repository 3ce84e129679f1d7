"""The learning-rate schedules of galmorph.core.training.lr_at (one formula for both backends)."""

import math

import numpy as np
import pytest

from galmorph.config import TrainConfig
from galmorph.core import training
from galmorph.core.errors import GalmorphError
from galmorph.workflows.prepare import hyper_from


def rates(**kw) -> list[float]:
    hyper = hyper_from(TrainConfig(**kw))
    return [training.lr_at(e, hyper) for e in range(hyper.epochs)]


def test_constant_is_the_learning_rate_every_epoch():
    assert rates(learning_rate=3e-4, epochs=5) == [3e-4] * 5


def test_cosine_warms_up_linearly_then_decays_towards_zero_after_the_last_epoch():
    lr = rates(learning_rate=1e-3, epochs=10, lr_schedule="cosine", warmup_epochs=3)
    assert lr[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # lr * (e + 1) / (W + 1), then the peak
    decay = lr[3:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 7))) and decay[-1] > 0
    assert rates(learning_rate=1e-3, epochs=4, lr_schedule="cosine")[0] == 1e-3  # no warm-up: the peak first


def test_warmup_longer_than_the_run_is_cut_to_leave_one_decay_epoch():
    assert rates(learning_rate=1e-3, epochs=1, lr_schedule="cosine", warmup_epochs=5) == [1e-3]
    assert rates(learning_rate=1e-3, epochs=3, lr_schedule="cosine", warmup_epochs=5) == pytest.approx(
        [1e-3 / 3, 2e-3 / 3, 1e-3])


def test_onecycle_rises_from_a_25th_to_the_peak_over_30_percent_then_anneals():
    lr = rates(learning_rate=1e-3, epochs=10, lr_schedule="onecycle")
    assert lr[0] == pytest.approx(4e-5) and lr[3] == pytest.approx(1e-3) and max(lr) == lr[3]
    assert all(a < b for a, b in zip(lr[:4], lr[1:4])) and all(a > b for a, b in zip(lr[3:], lr[4:]))
    assert 0 < lr[-1] < 0.05 * 1e-3  # the end of the last epoch would be 4e-9


def test_negative_warmup_is_a_one_line_error():
    with pytest.raises(GalmorphError, match="warmup_epochs must be 0 or more"):
        TrainConfig(warmup_epochs=-1).validate()
    with pytest.raises(GalmorphError, match="unknown lr_schedule 'linear'"):
        TrainConfig(lr_schedule="linear").validate()


PROBA = np.array([[0.6, 0.4], [0.4, 0.6]])


def test_the_reporter_logs_the_rate_the_backend_reported():
    logged = []
    reporter = training.EpochReporter(np.array([0, 1]), log=lambda m, step: logged.append(m))
    reporter.start_epoch(5e-4)
    reporter.end_epoch(0, 0.5, 0.5, PROBA, 2)
    reporter.start_epoch()  # a caller without a schedule logs no rate
    reporter.end_epoch(1, 0.5, 0.5, PROBA, 2)
    assert logged[0]["learning_rate"] == 5e-4 and "learning_rate" not in logged[1]
