"""galmorph's figures leave matplotlib's state alone: in a notebook, whose backend is the
inline one, drawing them (during training) must not switch the session to Agg, which would
leave every later plt.show() of the user's blank, nor leave figures open for it to show."""

import json

from conftest import run_python


def test_drawing_the_figures_keeps_the_sessions_backend_and_opens_no_figure(tmp_path):
    code = f"""
import json, sys
import matplotlib
matplotlib.use("svg")  # a session's own choice (a notebook's: module://matplotlib_inline.backend_inline)
import matplotlib.pyplot as plt
import numpy as np
from pathlib import Path
from galmorph.tracking import figures

out = Path({str(tmp_path)!r})
report = {{"class_names": ["E", "Sp"], "confusion_matrix": [[3, 1], [0, 4]],
           "confusion_matrix_normalised": [[0.75, 0.25], [0.0, 1.0]]}}
figures.confusion_matrix(report, out / "cm.png")
from types import SimpleNamespace as Epoch
history = [Epoch(epoch=0, train_loss=1.0, val_loss=1.1, train_accuracy=0.5, val_accuracy=0.4),
           Epoch(epoch=1, train_loss=0.8, val_loss=0.9, train_accuracy=0.6, val_accuracy=0.55)]
figures.learning_curves(history, out / "curves.png")
y = np.array([0, 1, 1, 0]); p = np.array([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
figures.reliability_diagram(y, p, p, out / "rel.png")
print(json.dumps({{"backend": matplotlib.get_backend(), "open": plt.get_fignums()}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state == {"backend": "svg", "open": []}
    for name in ("cm.png", "curves.png", "rel.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
