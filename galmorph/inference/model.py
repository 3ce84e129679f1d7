"""A logged galmorph model, loaded: what it is (`ModelInfo`) and what it says about images
(`LoadedModel.predict` -> `Prediction`, `table` -> the output table).

Every galmorph model is an MLflow pyfunc (galmorph.inference.pyfunc) whose input is raw
uint8 RGB images (N, side, side, 3) as galmorph datasets store them, and whose output is
`table(...)`: p_<class> per class, predicted, confidence, and p_<class>_std for ensembles.
`load` returns that same pyfunc wrapped, so `galmorph predict` and `mlflow models serve`
compute the same numbers by the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.metrics import metric_safe

METADATA_KEY = "galmorph"  # the MLmodel `metadata` entry that holds a model's ModelInfo


@dataclass(frozen=True)
class ModelInfo:
    """What a galmorph model is, stored with it (MLmodel metadata["galmorph"]).

    image_side: the side in pixels of the uint8 images the model takes (the training data's
    images as loaded, after any --image-size); pixel_scale: arcsec/px where the training
    dataset has a fixed one (nair2010: 0.7), else None (Galaxy10: each cutout scaled to its
    galaxy). temperature: the calibration temperature (1.0 = uncalibrated; for an ensemble the
    mean of its members', each member applying its own). kind: "single" or "ensemble";
    members: the ensemble's member run ids (empty for a single model).
    """

    class_names: tuple[str, ...]
    image_side: int
    pixel_scale: float | None
    band: str
    network: str
    backend: str
    dataset: str
    scheme: str
    temperature: float = 1.0
    run_id: str = ""
    kind: str = "single"
    members: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "class_names": list(self.class_names), "members": list(self.members)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        scale = known.get("pixel_scale")
        return cls(**{**known, "class_names": tuple(known["class_names"]), "members": tuple(known.get("members", ())),
                      "image_side": int(known["image_side"]), "temperature": float(known.get("temperature", 1.0)),
                      "pixel_scale": None if scale is None else float(scale)})


@dataclass
class Prediction:
    """proba: float64 (N, K) class probabilities; std: float64 (N, K), the members' standard
    deviation (ensembles only, else None); weights: the model's decision rule (per-class
    weights of galmorph.core.decision, chosen on its validation split), None for the argmax."""

    proba: np.ndarray
    std: np.ndarray | None = field(default=None)
    weights: tuple[float, ...] | None = field(default=None)


def column(name: str) -> str:
    """The output column of class `name`: p_<name made column-safe> (as in predictions.csv)."""
    return f"p_{metric_safe(name)}"


def table(prediction: Prediction, class_names) -> "pandas.DataFrame":  # noqa: F821
    """One row per image: p_<class> for every class, predicted (the class the model's decision
    rule names: galmorph.core.decision), confidence (that class's probability) and, for
    ensembles, p_<class>_std."""
    from galmorph.core.decision import decide

    import pandas as pd

    names = list(class_names)
    proba = np.asarray(prediction.proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(names):
        raise ValueError(f"probabilities {proba.shape} do not match {len(names)} classes")
    out = {column(n): proba[:, i] for i, n in enumerate(names)}
    named = decide(proba, prediction.weights) if len(proba) else np.zeros(0, np.intp)
    out["predicted"] = np.asarray(names, dtype=object)[named] if len(proba) else np.zeros(0, object)
    out["confidence"] = proba[np.arange(len(proba)), named]
    if prediction.std is not None:
        out.update({f"{column(n)}_std": np.asarray(prediction.std, dtype=np.float64)[:, i] for i, n in enumerate(names)})
    return pd.DataFrame(out)


def check_images(images, side: int) -> np.ndarray:
    """`images` as uint8 (N, side, side, 3); a one-line GalmorphError otherwise (resizing to the
    model's side is the caller's job: galmorph predict does it)."""
    x = np.asarray(images)
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (side, side, 3):
        raise GalmorphError(f"the model takes uint8 RGB images of {side}x{side} pixels, (N, {side}, {side}, 3); "
                            f"got an array of shape {tuple(x.shape)}; resize them to {side}x{side} first")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
            raise GalmorphError(f"the model takes uint8 images (0-255, as galmorph datasets store them); got {x.dtype}")
        x = x.astype(np.uint8)
    return x


class LoadedModel:
    """A galmorph model loaded from MLflow: `.info` and `.predict(images)`.

    Wraps the pyfunc (`.pyfunc`); predict calls the same code the pyfunc's own predict calls
    (galmorph.inference.pyfunc.GalmorphModel.prediction), without the table round trip.
    """

    def __init__(self, pyfunc, info: ModelInfo, uri: str = ""):
        self.pyfunc = pyfunc
        self.info = info
        self.uri = uri
        self._model = pyfunc.unwrap_python_model()

    def predict(self, images: np.ndarray, *, tta: bool | str = False, calibrated: bool = True) -> Prediction:
        """Probabilities of uint8 images (N, side, side, 3); `tta`: the mean over the 40 views
        (True) or the 8 dihedral views (dihedral), galmorph.data.augment.tta_views; `calibrated`:
        with the stored temperature(s) applied (False: the network as trained)."""
        x = check_images(images, self.info.image_side)
        return self._model.prediction(x, tta=tta, calibrated=bool(calibrated))

    @property
    def decision_weights(self) -> tuple[float, ...] | None:
        """The per-class weights of the model's decision rule (None: the plain argmax)."""
        return self._model.decision_weights

    def table(self, prediction: Prediction):
        return table(prediction, self.info.class_names)


def info_of(pyfunc_model, ref: str = "") -> ModelInfo:
    """The ModelInfo stored with a loaded pyfunc, or in an MLmodel file alone (an
    mlflow.models.Model); a GalmorphError if it is not a galmorph model."""
    meta = getattr(pyfunc_model, "metadata", None)
    meta = meta if isinstance(meta, dict) else getattr(meta, "metadata", None)
    stored = (meta or {}).get(METADATA_KEY)
    if not stored:
        raise GalmorphError(f"model {ref}: not a galmorph model (its MLmodel has no galmorph metadata); "
                            "pass a model logged by galmorph train, retrain or multiseed")
    return ModelInfo.from_dict(stored)


def load(reference: str) -> LoadedModel:
    """The model `reference` names: a run id, runs:/<id>/model, models:/NAME/VERSION,
    models:/NAME@ALIAS or a multiseed parent run id (its ensemble). One-line GalmorphError for
    an unknown run or URI, a run without a model, or a model that is not galmorph's."""
    import mlflow

    from galmorph.inference.resolve import resolve
    from galmorph.tracking.artifacts import no_progress_bar

    found = resolve(reference, flag="model")
    try:
        with no_progress_bar():
            pyfunc = mlflow.pyfunc.load_model(found.model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise GalmorphError(f"model {reference}: {found.model_uri} cannot be loaded as an MLflow model "
                            f"({str(exc).splitlines()[0][:200]})") from None
    info = info_of(pyfunc, reference)
    try:
        inner = pyfunc.unwrap_python_model()
    except mlflow.exceptions.MlflowException:
        inner = None
    if not hasattr(inner, "prediction"):
        raise GalmorphError(f"model {reference}: not a galmorph model; pass a model logged by galmorph")
    return LoadedModel(pyfunc, info, found.model_uri)
