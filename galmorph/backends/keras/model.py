"""Keras translation of a galmorph NetworkSpec.

The one import up the layers, `galmorph.inference.pyfunc.network_dir` inside
`logged_network`, is deliberate, for the reason galmorph/backends/torch/model.py gives: the
pyfunc module alone says where a network lies inside a logged model.
"""

from __future__ import annotations

import contextlib

import keras

from galmorph.backends.keras.device import policy, settings, strategy
from galmorph.core import training
from galmorph.core.errors import GalmorphError
from galmorph.core.specs import NetworkSpec


def build(spec: NetworkSpec, hyper=None) -> keras.Model:
    """A keras.Model taking float32 NHWC images and returning float32 class probabilities.

    Built in hyper's precision (a mixed dtype policy on every layer but the softmax output)
    and under its tf.distribute strategy (see device.strategy), which fit() then trains in.
    Without hyper: float32, Keras's default strategy (e.g. to count parameters).
    """
    if hyper is None:
        return _build(spec, policy("fp32"))
    s = settings(hyper)
    scope = strategy(s.devices)
    with scope.scope() if scope is not None else contextlib.nullcontext():
        return _build(spec, policy(s.precision), hyper.pretrained == "imagenet")


def _build(spec: NetworkSpec, dtype, pretrained: bool = False) -> keras.Model:
    if spec.is_zoo:
        return _build_zoo(spec, dtype, pretrained)
    inputs = keras.Input(shape=spec.input_shape, name="image")
    x = inputs
    for i, layer in enumerate(spec.layers):
        name = f"{layer.type}{i}"
        if layer.type == "conv":
            x = keras.layers.Conv2D(layer.filters, layer.kernel, padding="valid", activation="relu", name=name, dtype=dtype)(x)
        elif layer.type == "bn":
            x = keras.layers.BatchNormalization(momentum=training.BN_MOMENTUM, epsilon=training.BN_EPSILON, name=name, dtype=dtype)(x)
        elif layer.type == "maxpool":
            x = keras.layers.MaxPooling2D(layer.size, name=name, dtype=dtype)(x)
        elif layer.type == "flatten":
            x = keras.layers.Flatten(name=name, dtype=dtype)(x)
        elif layer.type == "dropout":
            x = keras.layers.Dropout(layer.rate, name=name, dtype=dtype)(x)
        elif layer.type == "dense":
            x = keras.layers.Dense(layer.units, activation="relu", name=name, dtype=dtype)(x)
        elif layer.type == "output":
            x = keras.layers.Dense(layer.units, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, x, name=spec.name)


def _build_zoo(spec: NetworkSpec, dtype, pretrained: bool) -> keras.Model:
    """A zoo network (architectures.yaml `zoo.keras`) with galmorph's head: global average
    pooling ("pool", whose input Grad-CAM weighs), the classifier dropout and the softmax.

    One flat functional graph from the image input (not the zoo's model nested as one layer),
    so that explain finds its convolutions. A keras_hub backbone brings its own input layer.
    """
    import importlib

    builder = spec.builder("keras")
    try:
        module = importlib.import_module(builder["module"])
    except ImportError as exc:
        raise GalmorphError(f"{spec.name} needs {builder['module'].split('.')[0]} ({exc}); install it with "
                            f"`pip install {builder['module'].split('.')[0].replace('_', '-')}`") from None
    make = getattr(module, builder["name"])
    try:
        return _zoo_graph(spec, builder, make, dtype, pretrained)
    except (OSError, ValueError) as exc:  # no download and no cached copy
        if not pretrained:
            raise
        raise GalmorphError(f"could not load the ImageNet weights {spec.pretrained_name('keras')} of {spec.name} "
                            f"({type(exc).__name__}); connect to the internet once (Keras caches them), or drop "
                            "--pretrained") from None


def _zoo_graph(spec: NetworkSpec, builder: dict, make, dtype, pretrained: bool) -> keras.Model:
    args = builder.get("args") or {}
    with _dtype_policy(dtype):
        if builder["call"] == "backbone":
            backbone = (make.from_preset(spec.pretrained_name("keras"), image_shape=spec.input_shape, load_weights=True)
                        if pretrained else make(**args, image_shape=spec.input_shape))
            inputs, x = backbone.input, backbone.output
        else:
            inputs = keras.Input(shape=spec.input_shape, name="image")
            scaled = keras.layers.Rescaling(float(builder["scale"]), name="to_255")(inputs) if "scale" in builder else inputs
            app = make(include_top=False, weights=spec.pretrained_name("keras") if pretrained else None,
                       input_tensor=scaled, pooling=None, **args)
            x = app.output
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        if spec.layers[-1].rate > 0:
            x = keras.layers.Dropout(spec.layers[-1].rate, name="head_dropout")(x)
    x = keras.layers.Dense(spec.n_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, x, name=spec.name)


@contextlib.contextmanager
def _dtype_policy(dtype):
    """The zoo builders take no dtype: they build under the global policy, set for the while."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def count_params(model: keras.Model) -> tuple[int, int]:
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    return trainable, int(model.count_params())



NETWORK_FILE = "network.keras"


def save_network(model: keras.Model, directory: str) -> list[str]:
    """Write `model` to `directory` as a .keras file (architecture and weights; loads without
    galmorph); return the pip requirements that load it."""
    model.save(f"{directory}/{NETWORK_FILE}")
    return [f"keras=={keras.__version__}", _tf_requirement()]


def load_network(directory: str) -> keras.Model:
    """The keras.Model save_network wrote to `directory` (uncompiled: for inference)."""
    return keras.saving.load_model(f"{directory}/{NETWORK_FILE}", compile=False)


def _tf_requirement() -> str:
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "tensorflow"


def logged_network(uri: str) -> keras.Model:
    """The keras.Model of the galmorph model logged at `uri`: from the pyfunc model's artifacts
    (galmorph.inference.pyfunc.network_dir), or from a model logged before galmorph models
    were pyfuncs (mlflow.keras)."""
    import tempfile

    import mlflow

    from galmorph.inference.pyfunc import network_dir

    with tempfile.TemporaryDirectory(prefix="galmorph-net-") as tmp:
        folder = network_dir(uri, tmp)
        if folder is None:
            return mlflow.keras.load_model(uri)
        return load_network(str(folder))


def load_weights(model: keras.Model, uri: str, freeze: str = "none") -> list[str]:
    """Copy the weights of the keras.Model logged at `uri` layer by layer (same layer names:
    both were built from specs); layers whose shapes differ are left as built and returned.
    freeze "conv": convolutions and batch normalisation untrainable (BN then runs in inference mode)."""
    source = {layer.name: layer for layer in logged_network(uri).layers}
    kept = []
    for layer in model.layers:
        if not layer.weights:
            continue
        src = source.get(layer.name)
        values = src.get_weights() if src is not None else []
        if [tuple(v.shape) for v in values] != [tuple(w.shape) for w in layer.weights]:
            kept.append(layer.name)
            continue
        layer.set_weights(values)
    for layer in model.layers:
        if freeze == "conv" and isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization)):
            layer.trainable = False
    return kept
