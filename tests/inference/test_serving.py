"""`mlflow models serve -m models:/NAME@ALIAS --env-manager local`: the real scoring server on
127.0.0.1 answers /invocations with a JSON list of uint8 images ({"inputs": ...}, MLflow's
tensor input) and returns the named probabilities that the loaded model (the code
`galmorph predict` calls) gives for the same images. The model is a multiseed group's
ensemble, registered by `multiseed --register-as NAME --alias ALIAS`.

One backend only: PyTorch. The server process imports the model's framework; TensorFlow's
import and Keras's model loading add tens of seconds on two CPU cores, and the pyfunc is the
same code for both backends (its Keras member was served by hand, docs/serving.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
from conftest import REPO, child_env, free_port, make_h5, run_python, stop_group, wait_for

NAME, ALIAS = "galaxies", "champion"
URI = f"models:/{NAME}@{ALIAS}"


def _ping(port: int, server: subprocess.Popen, log) -> bool:
    if server.poll() is not None:
        pytest.fail(f"the scoring server exited with {server.returncode}: {log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
@pytest.mark.torch
def test_the_served_model_answers_like_the_loaded_one(tmp_path, tracking_uri):
    import mlflow

    h5 = make_h5(tmp_path / "tiny.h5", n=60, size=32, n_classes=3)
    # a two-seed group registers its ensemble (served like any model, with the members' std);
    # c1: c2's 7x7 and 5x5 convolutions do not fit a 32 px crop
    group = subprocess.run(
        [sys.executable, "-m", "galmorph", "multiseed", "--seeds", "2", "--model", "c1", "--backend", "torch",
         "--dataset", str(h5), "--epochs", "1", "--width", "0.25", "--dense-units", "32", "--batch-size", "32",
         "--threads", "1", "--quiet", "true", "--register-as", NAME, "--alias", ALIAS],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env())
    assert group.returncode == 0, group.stderr[-3000:]
    assert f"registered models:/{NAME}/1 = {URI} (ensemble of seeds 0,1)" in group.stdout
    version = mlflow.MlflowClient().get_model_version_by_alias(NAME, ALIAS)
    parent = mlflow.MlflowClient().get_run(version.run_id)
    assert parent.data.tags["galmorph.kind"] == "multiseed" and version.source == parent.data.tags["model_uri"]
    assert parent.data.tags["registered_model_name"] == NAME and parent.data.tags["registered_model_alias"] == ALIAS
    assert float(version.tags["test_accuracy"]) == pytest.approx(parent.data.metrics["ensemble_test_accuracy"],
                                                                 abs=1e-5)
    assert "ensemble of seeds 0,1" in version.description
    with h5py.File(h5) as f:
        images = f["images"][[0, 1, 2]]  # one of each class

    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=child_env(), start_new_session=True)
    try:
        wait_for(lambda: _ping(port, server, log), 180, "the scoring server's /ping")
        served = _post(port, {"inputs": images.tolist()})["predictions"]
        wrong = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                                       data=json.dumps({"inputs": images[:, :16].tolist()}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=60)
        assert refused.value.code == 400 and b"(-1, 32, 32, 3)" in refused.value.read()
    finally:
        stop_group(server)

    # what galmorph predict computes: the loaded model, in a fresh process (one framework per process)
    np.save(tmp_path / "images.npy", images)
    code = (f"import json, numpy as np; from galmorph.inference.model import load; m = load({URI!r}); "
            f"p = m.predict(np.load({str(tmp_path / 'images.npy')!r})); "
            "print('TABLE' + m.table(p).to_json(orient='records'))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("TABLE"))[5:])

    columns = ["p_k0", "p_k1", "p_k2", "predicted", "confidence", "p_k0_std", "p_k1_std", "p_k2_std"]
    assert len(served) == 3 and [list(row) for row in served] == [columns] * 3
    for got, want in zip(served, local):
        for key in ("p_k0", "p_k1", "p_k2", "confidence", "p_k0_std", "p_k1_std", "p_k2_std"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
        assert got["predicted"] == want["predicted"]
    assert sum(served[0][c] for c in columns[:3]) == pytest.approx(1.0, abs=1e-6)
