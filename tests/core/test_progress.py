"""What the console shows of training (galmorph.core.progress, fed by the reporter) and what is
kept off it (galmorph.core.console)."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest

from galmorph.core import console, training
from galmorph.core.progress import EpochProgress, epoch_line

LABELS = np.array([0, 1, 0, 1])
GOOD = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8]])
BAD = np.array([[0.4, 0.6], [0.6, 0.4], [0.45, 0.55], [0.55, 0.45]])


def _reporter(stream, **kw):
    progress = EpochProgress(kw.pop("epochs", 5), 100, stream=stream, bar=kw.pop("bar", False),
                             prefix=kw.pop("prefix", ""))
    return training.EpochReporter(LABELS, progress=progress, **kw)


def _epoch(reporter, proba, loss=0.5):
    reporter.start_epoch()
    for _ in range(4):
        reporter.batch_done(25)
    return reporter.end_epoch(len(reporter.history), loss, 0.75, proba, 100)


def test_one_plain_line_per_epoch_marked_best_when_the_validation_loss_drops():
    out = io.StringIO()
    reporter = _reporter(out)
    _epoch(reporter, BAD)
    _epoch(reporter, GOOD)
    _epoch(reporter, BAD)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/5  train loss 0.500 acc 0.750  val loss ")
    assert lines[0].endswith("(best)") and lines[1].endswith("(best)") and not lines[2].endswith("(best)")
    assert lines[1] == epoch_line(1, 5, 0.5, 0.75, reporter.history[1].val_loss, 1.0,
                                  float(lines[1].split("  ")[-2].removesuffix(" s")), True)


def test_early_stopping_says_so_in_one_line():
    out = io.StringIO()
    reporter = _reporter(out, patience=2)
    decisions = [_epoch(reporter, p) for p in (GOOD, BAD, BAD)]
    assert decisions[-1].stop
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1] == ("early stopping after epoch 3: no lower validation loss for 2 epochs; keeping epoch 1")


def test_pruning_says_so_in_one_line_after_the_epoch():
    class Trial:
        def report(self, value, step):
            self.value = value

        def should_prune(self):
            return True

    out = io.StringIO()
    reporter = _reporter(out, trial=Trial())
    with pytest.raises(training.Pruned):
        _epoch(reporter, BAD)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/5 ")
    assert lines[1] == "pruned by Optuna after epoch 1 (val_accuracy 0.000)"


def test_nested_runs_prefix_their_lines_with_the_run_name():
    out = io.StringIO()
    reporter = _reporter(out, prefix="c2-torch-synthetic-x2-seed1", patience=1)
    _epoch(reporter, GOOD)
    _epoch(reporter, BAD)
    assert all(line.startswith("c2-torch-synthetic-x2-seed1  ") for line in out.getvalue().splitlines())
    assert "c2-torch-synthetic-x2-seed1  early stopping after epoch 2" in out.getvalue()


def test_quiet_prints_nothing_but_still_reports():
    reporter = training.EpochReporter(LABELS, patience=1)  # no progress: --quiet, replicas
    _epoch(reporter, GOOD)
    assert _epoch(reporter, BAD).stop and len(reporter.history) == 2


def test_the_bar_counts_images_from_several_threads_and_clears_before_the_line():
    out = io.StringIO()
    progress = EpochProgress(3, 4000, stream=out, bar=True)
    progress.start(0)
    bar = progress._tqdm
    threads = [threading.Thread(target=lambda: [progress.advance(1) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.n == 4000
    assert "epoch 1/3" in out.getvalue() and "img" in out.getvalue()  # tqdm's bar: desc, unit (rate, ETA)
    progress.line("epoch 1/3  done")
    assert progress._tqdm is None and out.getvalue().endswith("epoch 1/3  done\n")


def test_a_pipe_gets_lines_and_a_terminal_gets_bars():
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        assert EpochProgress(1, 10, stream=pipe).bar is False
    os.close(read)
    pty = pytest.importorskip("pty")
    parent, child = pty.openpty()
    with os.fdopen(child, "w") as terminal:
        assert EpochProgress(1, 10, stream=terminal).bar is True
    os.close(parent)


TF_NOTICE = ("I0000 00:00:1795996803.704479    2123 port.cc:153] oneDNN custom operations are on. You may see "
             "slightly different numerical results\n")
CUDA_NOTICE = "I0000 00:00:1795996803.705675    2123 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
CUINIT = ("E0000 00:00:1795996806.540099    2123 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
FATAL = "F0000 00:00:1795996806.540099    2123 op.cc:1] Check failed: x\n"


@pytest.mark.parametrize("level,kept", [(0, [PREAMBLE, TF_NOTICE, CUINIT, FATAL]), (1, [PREAMBLE, CUINIT, FATAL]),
                                        (2, [CUINIT, FATAL]), (3, [FATAL])])
def test_native_log_lines_below_the_level_are_dropped_and_everything_else_kept(capfd, level, kept):
    with console.native_log_filter(level):
        for line in (PREAMBLE, TF_NOTICE, "a line of our own\n", CUINIT, FATAL):
            os.write(2, line.encode())  # as C++ writes: straight to the file descriptor
    err = capfd.readouterr().err
    assert err.splitlines(keepends=True) == [x for x in (PREAMBLE, TF_NOTICE, "a line of our own\n", CUINIT, FATAL)
                                             if x in kept or x == "a line of our own\n"]
    assert not console.dropped(CUDA_NOTICE, 0) and console.dropped(CUDA_NOTICE, 1)


def test_the_filter_puts_stderr_back_even_when_the_block_raises(capfd):
    with pytest.raises(ImportError):
        with console.native_log_filter(3):
            os.write(2, TF_NOTICE.encode() + b"why it failed\n")
            raise ImportError("no tensorflow")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "why it failed\nafter\n"


def test_relative_local_stores_are_shown_absolute(tmp_path, monkeypatch):
    from galmorph.workflows.train import _store_for_humans

    monkeypatch.chdir(tmp_path)
    assert _store_for_humans("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert _store_for_humans("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert _store_for_humans("mlruns") == str(tmp_path / "mlruns")
    assert _store_for_humans("http://host:5000") == "http://host:5000"
