"""The logged galmorph model: an MLflow pyfunc (`GalmorphModel`) that takes raw uint8 RGB
images and returns the named class probabilities, and the functions that log it.

Layout of a logged model (MLflow artifact path "model"):
- artifacts/member<k>/: one network each (one for a single model, one per seed for an
  ensemble): the backend's saved network (backend.save_network: torch a pickled module,
  keras a .keras file) and settings.json (backend, band channels, crop fraction, batch size,
  temperature, class names, image side): the preprocessing of that network's training run.
- code/galmorph: the galmorph package (code_paths), so the model loads without a checkout;
  served.py (models from code) builds the GalmorphModel, which reads artifacts/info.json.
- MLmodel metadata["galmorph"]: the ModelInfo; signature: input TensorSpec uint8
  (-1, side, side, 3), output the table's columns, params `tta` and `calibrated` (booleans).

Preprocessing is galmorph.data.augment's own (BatchMaker + eval_batches: band selection, the
training crop's centre view, x / 255), never a copy of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from galmorph.core import calibration
from galmorph.core.errors import GalmorphError
from galmorph.inference.model import METADATA_KEY, ModelInfo, Prediction, check_images, column, table
from galmorph.tracking.artifacts import no_progress_bar

ARTIFACT_PATH = "model"
SETTINGS = "settings.json"
INFO = "info"  # artifacts/info.json: the ModelInfo, for the model's own code (MLmodel metadata holds it too)
MEMBER = "member"  # artifacts/member0, member1, ...
# the pyfunc's inference parameters and their defaults: tta (boolean, as models logged before
# dihedral TTA took it), which views it averages (paper40: the 40; dihedral: the 8 of the centre
# crop), calibrated
PARAMS = {"tta": False, "tta_views": "paper40", "calibrated": True}


class _Member:
    """One network and its run's preprocessing, loaded from an artifacts/member<k> folder."""

    def __init__(self, folder: str):
        from galmorph import backends

        self.settings = json.loads((Path(folder) / SETTINGS).read_text())
        self.backend = backends.get(self.settings["backend"])
        self.network = self.backend.load_network(folder)

    def proba(self, x: np.ndarray, tta, calibrated: bool) -> np.ndarray:
        """float64 (N, K): centre view, or the mean over the views of TTA setting `tta`
        (augment.tta_views: the 40 views or the 8 dihedral ones), temperature applied to each
        view's probabilities when `calibrated`."""
        from galmorph.data import augment

        s = self.settings
        maker = augment.BatchMaker(x, s["channels"], s["crop_fraction"])
        each = (lambda p: calibration.apply_temperature(p, s["temperature"])) if calibrated else None
        return augment.view_mean(lambda batches: self.backend.predict_proba(self.network, batches), maker,
                                 np.arange(x.shape[0]), s["batch_size"], tta, each)


class GalmorphModel(mlflow.pyfunc.PythonModel):
    """uint8 RGB images (N, side, side, 3) -> galmorph.inference.model.table (a DataFrame).

    Params (signature params): `tta` (the mean over views), `tta_views` (which: paper40, the 40
    views, or dihedral, the 8 rotations and mirrors of the centre crop), `calibrated` (apply each
    network's temperature; False: the networks as trained). An ensemble averages its members'
    probabilities and adds their standard deviation (population std over members).
    """

    info: dict = {}  # ModelInfo.to_dict(), from the artifact INFO
    decision_weights: tuple[float, ...] | None = None  # the members' mean decision-rule weights

    def load_context(self, context):
        self.info = json.loads(Path(context.artifacts[INFO]).read_text())
        keys = sorted((k for k in context.artifacts if k.startswith(MEMBER)), key=lambda k: int(k[len(MEMBER):]))
        self.members = [_Member(context.artifacts[k]) for k in keys]
        found = [m.settings["decision_weights"] for m in self.members if m.settings.get("decision_weights")]
        # models logged before galmorph chose a decision rule name the argmax
        self.decision_weights = tuple(np.mean(found, axis=0).tolist()) if len(found) == len(self.members) else None

    def prediction(self, x: np.ndarray, *, tta: bool | str = False, calibrated: bool = True) -> Prediction:
        probs = [m.proba(x, tta, calibrated) for m in self.members]
        if self.info["kind"] != "ensemble":
            return Prediction(probs[0], weights=self.decision_weights)
        stack = np.stack(probs)
        return Prediction(stack.mean(axis=0), stack.std(axis=0), self.decision_weights)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None):
        params = {**PARAMS, **(params or {})}
        x = check_images(_array(model_input), int(self.info["image_side"]))
        tta = params["tta_views"] if _flag(params["tta"]) else False
        found = self.prediction(x, tta=tta, calibrated=_flag(params["calibrated"]))
        return table(found, self.info["class_names"])


def _array(model_input) -> np.ndarray:
    """The images of a pyfunc input: a numpy array (a tensor-spec model's input), or what
    pandas or a dict holding one made of it."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    if hasattr(model_input, "to_numpy"):
        model_input = model_input.to_numpy()
    return np.asarray(model_input)


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def signature(info: ModelInfo):
    """uint8 (-1, side, side, 3) in; the table's columns out; params tta, tta_views, calibrated."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    side = info.image_side
    cols = [ColSpec("double", column(n)) for n in info.class_names]
    cols += [ColSpec("string", "predicted"), ColSpec("double", "confidence")]
    if info.kind == "ensemble":
        cols += [ColSpec("double", f"{column(n)}_std") for n in info.class_names]
    params = ParamSchema([ParamSpec(k, "boolean" if isinstance(v, bool) else "string", v) for k, v in PARAMS.items()])
    return ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, side, side, 3))]), Schema(cols), params)


def member_settings(backend_name: str, *, channels, crop_fraction: float, batch_size: int, temperature: float,
                    info: ModelInfo, decision_weights=None) -> dict:
    """What settings.json holds: everything a network's predict needs besides its weights;
    decision_weights: its decision rule (galmorph.core.decision), None for the argmax."""
    out = {"backend": backend_name, "channels": [int(c) for c in channels], "crop_fraction": float(crop_fraction),
           "batch_size": int(batch_size), "temperature": float(temperature),
           "class_names": list(info.class_names), "image_side": int(info.image_side)}
    if decision_weights is not None:
        out["decision_weights"] = [float(w) for w in decision_weights]
    return out


def log_run_model(backend, network, config, prepared, temperature: float, run_id: str, decision_weights=None) -> str:
    """Log a training run's network (galmorph.workflows.train) with what its run knows: the
    class names, image side and pixel scale of its data, its band channels, crop and
    evaluation batch size, its calibration `temperature` and decision rule (`decision_weights`,
    chosen on its validation split); three test images as the example."""
    from galmorph.data import registry

    data, split, maker = prepared.data, prepared.split, prepared.maker
    info = ModelInfo(class_names=tuple(data.class_names), image_side=data.image_size,
                     pixel_scale=registry.pixel_scale(data), band=config.band, network=config.model,
                     backend=config.backend, dataset=config.dataset, scheme=data.scheme,
                     temperature=float(temperature), run_id=run_id)
    settings = member_settings(config.backend, channels=maker.channels, crop_fraction=config.crop_fraction,
                               batch_size=config.eval_batch_size, temperature=temperature, info=info,
                               decision_weights=decision_weights)
    example = data.images[split.test[: min(3, split.test.size)]]
    return log_single(backend, network, info, settings, example)


def log_single(backend, network, info: ModelInfo, settings: dict, example: np.ndarray) -> str:
    """Log `network` (a backend's trained model) with its preprocessing `settings`
    (member_settings) to the active run as the pyfunc model "model"; return its model URI.
    `example`: a few of the run's raw uint8 test images (the model's input example)."""
    with tempfile.TemporaryDirectory(prefix="galmorph-model-") as tmp:
        folder = Path(tmp) / f"{MEMBER}0"
        folder.mkdir()
        requirements = backend.save_network(network, str(folder))
        (folder / SETTINGS).write_text(json.dumps(settings, indent=2))
        return _log({f"{MEMBER}0": str(folder)}, info, example, requirements)


def log_ensemble(member_uris: list[str], run_id: str, member_runs: list[str]) -> str:
    """Log the ensemble of the galmorph models at `member_uris` (the runs `member_runs`) to the
    active run `run_id`; return its model URI. Their networks and settings are copied in, so the
    ensemble loads and serves on its own; its ModelInfo is the first member's with kind
    "ensemble", the members and the mean temperature; its input example the first member's."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="galmorph-ensemble-") as tmp:
        artifacts, requirements, infos = {}, [], []
        for k, uri in enumerate(member_uris):
            source = network_dir(uri, Path(tmp) / f"download{k}")
            if source is None:
                raise GalmorphError(f"ensemble member {uri} is not a galmorph pyfunc model")
            model_dir = source.parent.parent
            infos.append(ModelInfo.from_dict(json.loads((source.parent / "info.json").read_text())))
            target = Path(tmp) / f"{MEMBER}{k}"
            shutil.copytree(source, target)
            artifacts[target.name] = str(target)
            requirements += [r for r in _requirements(model_dir) if r not in requirements]
            if k == 0:
                example = np.asarray(Model.load(str(model_dir)).load_input_example(str(model_dir)))
        if len({(i.class_names, i.image_side) for i in infos}) != 1:
            raise GalmorphError("ensemble members differ in their classes or image side; they make no ensemble")
        info = dataclasses.replace(infos[0], kind="ensemble", members=tuple(member_runs), run_id=run_id,
                                   temperature=float(np.mean([i.temperature for i in infos])))
        return _log(artifacts, info, example, requirements)


def _log(artifacts: dict, info: ModelInfo, example: np.ndarray, requirements: list[str]) -> str:
    """Log the pyfunc of `artifacts` (member folders) and `info` to the active run."""
    import mlflow

    import galmorph

    # the ModelInfo as an artifact too: MLflow would log a model_config as run params
    info_file = Path(next(iter(artifacts.values()))).parent / "info.json"
    info_file.write_text(json.dumps(info.to_dict(), indent=2))
    artifacts = {**artifacts, INFO: str(info_file)}
    with no_progress_bar():  # MLflow downloads the model back to check the input example
        found = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH, python_model=str(Path(__file__).with_name("served.py")), artifacts=artifacts,
            code_paths=[str(Path(galmorph.__file__).resolve().parent)], signature=signature(info),
            input_example=np.ascontiguousarray(example, dtype=np.uint8), metadata={METADATA_KEY: info.to_dict()},
            pip_requirements=[*requirements, "numpy", "pandas"],
        )
    return found.model_uri


def _requirements(model_dir: Path) -> list[str]:
    path = model_dir / "requirements.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "mlflow", "numpy", "pandas"))]


def network_dir(uri: str, dest: Path) -> Path | None:
    """Download the model at `uri` into `dest` and return its one network's folder
    (artifacts/member0); None for a model logged before galmorph models were pyfuncs (a plain
    mlflow.pytorch / mlflow.keras model). An ensemble has several networks: a GalmorphError."""
    import mlflow

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with no_progress_bar():
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    members = sorted((local / "artifacts").glob(f"{MEMBER}*"))
    if not members:
        return None
    if len(members) > 1:
        raise GalmorphError(f"{uri} is an ensemble of {len(members)} networks; pass one of its member runs instead")
    return members[0]
