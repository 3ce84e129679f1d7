"""What the networks look at: feature maps of the first convolutions and Grad-CAM saliency.

Backend-neutral. A backend contributes only `galmorph/backends/<name>/explain.py` with the
same functions in each (`feature_maps`, `conv_gradients`, `load_logged_model`), all numpy
in, numpy out; choosing galaxies, the Grad-CAM arithmetic (Selvaraju et al. 2017: channel
weights = gradients averaged over the map, ReLU of the weighted sum, bilinear upsampling to
the input, scaled to [0, 1]) and the figures live here, once.

Logged under `explain/` of a run (`--explain true` at training time, or later with
`galmorph explain --run-id RUN`): `feature_maps_conv1.png`, `feature_maps_conv2.png`,
`grad_cam.png`, `explain.json` (the galaxies, their classes and predictions, and how much
of each saliency map falls on the central half of the crop) and `explain.npz` (the images
and saliency maps). The metric `explain_saliency_centre_fraction` is the mean of the latter.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from galmorph import backends, tracking
from galmorph.config import TrainConfig, option
from galmorph.core import interrupts
from galmorph.core.errors import GalmorphError
from galmorph.data import augment
from galmorph.tracking import figures
from galmorph.workflows.prepare import prepare

N_FEATURE_MAPS = 8  # filters shown per convolution
FEATURE_LAYERS = (0, 1)  # the first two convolutions


@dataclass
class ExplainConfig:
    """Settings of `galmorph explain` (MLproject `explain`)."""

    run_id: str = option("", "MLflow run id of a galmorph training run", required=True)
    per_class: int = option(3, "test galaxies per class")


def backend_module(backend):
    """The explain module of a backend (given as its package or its name)."""

    name = backend if isinstance(backend, str) else backend.NAME
    if name not in backends.BACKENDS:
        raise GalmorphError(f"unknown backend {name!r}; choose one of {', '.join(backends.BACKENDS)}")
    backends.get(name)  # sets the framework up (e.g. KERAS_BACKEND) before the module imports it
    return importlib.import_module(f"{backends.BACKENDS[name]}.explain")


def choose(labels: np.ndarray, positions: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Up to `per_class` of `positions` for each class of `labels`, seeded, grouped by class."""
    positions = np.asarray(positions, dtype=np.int64)
    rng = np.random.default_rng([seed, 23])
    out = []
    for cls in np.unique(labels[positions]):
        mine = positions[labels[positions] == cls]
        out.append(np.sort(rng.permutation(mine)[:per_class]))
    return np.concatenate(out) if out else positions[:0]


def grad_cam(bx, model, x: np.ndarray, class_index, layer_index: int = -1) -> np.ndarray:
    """float32 (B, H, W) Grad-CAM of `class_index` at the input's resolution, each map in [0, 1]
    (all zeros where no location speaks for the class). `bx`: a backend's explain module."""
    act, grad = bx.conv_gradients(model, x, class_index, layer_index)
    weights = grad.mean(axis=(1, 2))  # (B, filters)
    cam = np.maximum(np.einsum("bhwf,bf->bhw", act, weights), 0.0)
    cam = resize(cam, x.shape[1:3])
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cam = np.where(peak[:, None, None] > 0, cam / peak[:, None, None], 0.0)
    return cam.astype(np.float32)


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of (B, h, w) maps to (B, H, W), pixel centres aligned."""
    def axis(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo)

    (y0, y1, wy), (x0, x1, wx) = axis(maps.shape[1], size[0]), axis(maps.shape[2], size[1])
    rows = maps[:, y0] * (1 - wy)[None, :, None] + maps[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def centre_fraction(cam: np.ndarray) -> np.ndarray:
    """Share of each saliency map's mass inside the central half (by side) of the image."""
    _, h, w = cam.shape
    inner = cam[:, h // 4 : h - h // 4, w // 4 : w - w // 4].sum(axis=(1, 2))
    total = cam.sum(axis=(1, 2))
    return np.where(total > 0, inner / np.maximum(total, 1e-12), 0.0)


def explain(bx, model, x: np.ndarray, labels: np.ndarray, class_names, proba: np.ndarray) -> dict:
    """Feature maps and Grad-CAM (of the predicted class) for images x with true `labels`."""
    predicted = proba.argmax(axis=1)
    cams = grad_cam(bx, model, x, predicted)
    maps = {k: bx.feature_maps(model, x, k) for k in FEATURE_LAYERS}
    return {"x": x, "labels": np.asarray(labels), "predicted": predicted, "proba": proba, "cams": cams,
            "feature_maps": maps, "class_names": list(class_names), "centre_fraction": centre_fraction(cams)}


def log_explanations(backend, model, prepared, config, *, per_class: int = 3, run_id: str | None = None) -> dict:
    """Explain a few test galaxies per class and log the figures under `explain/` of the
    active run (or of run `run_id`); returns the `explain` result."""
    import tempfile

    import mlflow

    data, split, maker = prepared.data, prepared.split, prepared.maker
    backend = _backend(backend) if isinstance(backend, str) else backend
    bx = backend_module(backend)
    pos = choose(data.labels, split.test, per_class, seed=config.seed)
    x = maker.batch(pos)
    proba = backend.predict_proba(model, augment.eval_batches(maker, pos, config.eval_batch_size))
    result = explain(bx, model, x, data.labels[pos], data.class_names, proba)
    title = f"{config.model} {config.backend} on {Path(data.name).stem} ({data.scheme})"
    with tempfile.TemporaryDirectory(prefix="galmorph-explain-") as tmp:
        out = Path(tmp)
        write(result, out, title, rows=data.rows[pos])
        client = mlflow.MlflowClient()
        if run_id is None:
            run_id = mlflow.active_run().info.run_id
        with interrupts.held():  # an interrupt waits for the copy: no half-copied file in the run
            client.log_artifacts(run_id, str(out), "explain")
        client.log_metric(run_id, "explain_saliency_centre_fraction", float(np.mean(result["centre_fraction"])))
    return result


def _backend(name):
    return backends.get(name)


def write(result: dict, out: Path, title: str, rows=None) -> list[Path]:
    """The figures, explain.json and explain.npz of an `explain` result, in folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = result["class_names"]
    paths = [feature_maps_figure(result, k, out / f"feature_maps_conv{k + 1}.png", title) for k in FEATURE_LAYERS]
    paths.append(grad_cam_figure(result, out / "grad_cam.png", title))
    rows = np.arange(len(result["labels"])) if rows is None else np.asarray(rows)
    doc = {
        "title": title,
        "grad_cam_layer": "last convolution",
        "feature_map_layers": [f"conv{k + 1}" for k in FEATURE_LAYERS],
        "feature_map_shapes": {f"conv{k + 1}": list(v.shape[1:]) for k, v in result["feature_maps"].items()},
        "galaxies": [
            {"row": int(r), "true": names[int(t)], "predicted": names[int(p)], "p_predicted": float(pr[int(p)]),
             "saliency_centre_fraction": float(c)}
            for r, t, p, pr, c in zip(rows, result["labels"], result["predicted"], result["proba"], result["centre_fraction"])
        ],
        "mean_saliency_centre_fraction": float(np.mean(result["centre_fraction"])),
    }
    (out / "explain.json").write_text(json.dumps(doc, indent=2))
    np.savez_compressed(out / "explain.npz", rows=rows, images=result["x"].astype(np.float16),
                        grad_cam=result["cams"].astype(np.float16), labels=result["labels"], predicted=result["predicted"])
    return paths + [out / "explain.json", out / "explain.npz"]


def _display(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1) if x.shape[-1] > 1 else x[..., 0]


def feature_maps_figure(result: dict, layer: int, path: Path, title: str = "") -> Path:
    maps, x, names = result["feature_maps"][layer], result["x"], result["class_names"]
    n, k = len(x), min(N_FEATURE_MAPS, maps.shape[-1])
    fig, axes = figures.subplots(n, k + 1, figsize=(1.15 * (k + 1), 1.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_display(x[i]), cmap="gray")
        axes[i, 0].set_ylabel(names[int(result["labels"][i])], fontsize=8)
        for j in range(k):
            axes[i, j + 1].imshow(maps[i, :, :, j], cmap="viridis")
            if i == 0:
                axes[i, j + 1].set_title(f"filter {j}", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=7)
    fig.subplots_adjust(top=1 - 0.5 / fig.get_figheight(), wspace=0.05, hspace=0.1)
    fig.suptitle(f"{title}: conv{layer + 1} feature maps ({maps.shape[1]}x{maps.shape[2]})", fontsize=9)
    return figures.save(fig, path)


def grad_cam_figure(result: dict, path: Path, title: str = "") -> Path:
    x, cams, names = result["x"], result["cams"], result["class_names"]
    labels, predicted = result["labels"], result["predicted"]
    classes = list(np.unique(labels))
    per = max(int(np.sum(labels == c)) for c in classes)
    fig, axes = figures.subplots(len(classes), 2 * per, figsize=(1.3 * 2 * per, 1.45 * len(classes)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for r, cls in enumerate(classes):
        for j, i in enumerate(np.flatnonzero(labels == cls)):
            a, b = axes[r, 2 * j], axes[r, 2 * j + 1]
            a.imshow(_display(x[i]), cmap="gray")
            b.imshow(_display(x[i]), cmap="gray")
            b.imshow(cams[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            a.set_title(f"true {names[int(cls)]}", fontsize=7)
            b.set_title(f"pred {names[int(predicted[i])]}", fontsize=7)
    fig.subplots_adjust(top=1 - 0.55 / fig.get_figheight(), wspace=0.05, hspace=0.3)
    fig.suptitle(f"{title}: Grad-CAM of the predicted class (last convolution)", fontsize=9)
    return figures.save(fig, path)


def explain_run(run_id: str, *, per_class: int = 3) -> dict:
    """Explain a finished galmorph run from what it logged (config, split, model); the figures
    are added to that run under `explain/`."""
    import tempfile

    import mlflow
    import yaml

    tracking.check_store()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise GalmorphError(f"no MLflow run {run_id!r} in the tracking store {tracking.redact(mlflow.get_tracking_uri())}; "
                            "copy the run id from the MLflow UI, or set MLFLOW_TRACKING_URI to the store it is in") from None
    uri = run.data.tags.get("model_uri")
    if not uri:
        raise GalmorphError(f"run {run_id} logged no model (log_model was false); train it again with --log-model true")
    tracking.check_artifacts(run.info.artifact_uri)  # the figures go there: checked before the model is loaded
    with tempfile.TemporaryDirectory(prefix="galmorph-explain-") as tmp:
        cfg = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())
        split_file = client.download_artifacts(run_id, "splits.json", tmp)
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in cfg.items() if k in known}).replace(split_file=split_file)
        prepared = prepare(config)
    bx = backend_module(config.backend)
    backend = _backend(config.backend)
    backend.setup(config.seed, config.threads)
    model = bx.load_logged_model(uri)
    return log_explanations(backend, model, prepared, config, per_class=per_class, run_id=run_id)
