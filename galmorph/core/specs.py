"""Backend-neutral network specs (experiments/architectures.yaml) resolved for one input.

`resolve(name, input_shape, n_classes, **hp)` turns a spec into concrete layers, each with
its output shape and parameter counts, so both backends build the same network and tests
can pin their parameter counts to these numbers. Shapes are (height, width, channels).

A zoo network (an entry with `zoo`: resnet18, efficientnet_b0, ...) has no layers written
down: its spec carries the zoo's builder per backend (`NetworkSpec.zoo`), and its parameter
count is the zoo's own (tests pin the backends to timm's count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from galmorph.core.errors import GalmorphError
from galmorph.core.paths import load_yaml

LAYER_TYPES = ("conv", "bn", "maxpool", "flatten", "dropout", "dense", "output")
ZOO_MIN_INPUT = 32  # a zoo network's smallest crop side when its entry names none


@dataclass(frozen=True)
class Layer:
    """One concrete layer. `out_shape` is (H, W, C) before flatten and (units,) after it."""

    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    filters: int = 0
    kernel: int = 0
    size: int = 0
    rate: float = 0.0
    units: int = 0
    trainable_params: int = 0
    total_params: int = 0


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    input_shape: tuple[int, int, int]
    n_classes: int
    layers: tuple[Layer, ...]
    options: dict = field(default_factory=dict)
    zoo: dict | None = None  # a zoo network: {backend: {call, module, name, args}} (architectures.yaml)

    @property
    def is_zoo(self) -> bool:
        return self.zoo is not None

    def builder(self, backend: str) -> dict:
        """The zoo's builder of this network for `backend` (a zoo network only)."""
        if self.zoo is None or backend not in self.zoo:
            raise GalmorphError(f"network {self.name} has no {backend} builder in architectures.yaml")
        return self.zoo[backend]

    def pretrained_name(self, backend: str) -> str:
        """The zoo's name of this network's ImageNet weights for `backend` (specs.pretrained_name)."""
        return pretrained_name(self.name, backend)

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable_params for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(layer.total_params for layer in self.layers)

    @property
    def flatten_size(self) -> int:
        for layer in self.layers:
            if layer.type == "flatten":
                return layer.out_shape[0]
        raise GalmorphError(f"network {self.name} has no flatten layer")


def architectures() -> dict:
    return load_yaml("architectures.yaml")


def available() -> list[str]:
    return sorted(architectures())


def resolve(
    name: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    width: float = 1.0,
    dense_units: int | None = None,
    dropout: float | None = None,
    _explain: bool = True,
    **options,
) -> NetworkSpec:
    """Concrete layers of network `name` for `input_shape` (H, W, C) and `n_classes`.

    `width` scales conv filters (rounded, at least 1), `dense_units` replaces the hidden
    dense widths, `dropout` the dropout rates; other keywords set the spec's options
    (e.g. batchnorm=False for C1). Raises GalmorphError when the input is too small.
    """
    spec, opts = _options(name, options)
    _check_arguments(n_classes, width, dropout, dense_units)
    h, w, c = (int(v) for v in input_shape)
    if "zoo" in spec:
        return _zoo(name, spec, opts, (h, w, c), n_classes, width, dense_units, dropout)
    shape: tuple[int, ...] = (h, w, c)
    layers: list[Layer] = []
    for raw in spec["layers"]:
        cond = raw.get("if")
        if cond is not None and not opts.get(cond):
            continue
        try:
            layer = _layer(name, raw, shape, width, dense_units, dropout)
        except _TooSmall as exc:
            raise _too_small(name, input_shape, str(exc), _explain, options) from None
        layers.append(layer)
        shape = layer.out_shape
    if len(shape) != 1:
        raise GalmorphError(f"architectures.yaml: {name} must flatten before its output layer")
    n = shape[0] * n_classes + n_classes
    layers.append(Layer("output", shape, (n_classes,), units=n_classes, trainable_params=n, total_params=n))
    return NetworkSpec(name, (h, w, c), n_classes, tuple(layers), opts)


def check_zoo_settings(name: str, width: float, dense_units: int | None) -> None:
    """A zoo network is built as its zoo has it: no filter width or dense units to change."""
    if is_zoo(name) and (width != 1.0 or dense_units):
        raise GalmorphError(f"width and dense_units apply to c1 and c2; {name} is built by its zoo as it is: "
                            "leave them at their defaults")


def pretrained_name(name: str, backend: str) -> str:
    """The zoo's name of network `name`'s ImageNet weights for `backend` (architectures.yaml
    `pretrained`); a GalmorphError where the zoo has none."""
    found = (_options(name, {})[0].get("pretrained") or {}).get(backend)
    if not found:
        raise GalmorphError(f"the {backend} zoo has no ImageNet weights for {name}; drop --pretrained")
    return found


def _zoo(name, spec, opts, shape, n_classes, width, dense_units, dropout) -> NetworkSpec:
    """The spec of zoo network `name`: one `output` layer stands for the whole network."""
    check_zoo_settings(name, width, dense_units)
    need = int(spec.get("min_input", ZOO_MIN_INPUT))
    h, w, _ = shape
    if min(h, w) < need:
        raise GalmorphError(f"input {h}x{w} is too small for {name}, which needs at least {need}x{need}: "
                            "use larger images (--image-size) or a larger crop_fraction")
    if dropout is not None:
        opts["dropout"] = float(dropout)
    head = Layer("output", shape, (n_classes,), units=n_classes, rate=float(opts.get("dropout", 0.0)))
    return NetworkSpec(name, shape, n_classes, (head,), opts, zoo=spec["zoo"])


def is_zoo(name: str) -> bool:
    """Whether network `name` is built by a framework's model zoo (architectures.yaml `zoo`)."""
    return "zoo" in _options(name, {})[0]


class _TooSmall(Exception):
    """A layer's window is larger than what it sees (message: what it sees)."""


def _options(name: str, options: dict) -> tuple[dict, dict]:
    """The architecture `name` and its options with the caller's overrides applied."""
    specs = architectures()
    if name not in specs:
        raise GalmorphError(f"unknown model {name!r}; choose one of {', '.join(sorted(specs))}")
    spec = specs[name]
    opts = dict(spec.get("options") or {})
    unknown = set(options) - set(opts)
    if unknown:
        raise GalmorphError(
            f"model {name} has no option {', '.join(sorted(unknown))}; its options are "
            f"{', '.join(sorted(opts)) or 'none'}"
        )
    opts.update({k: v for k, v in options.items() if v is not None})
    return spec, opts


def _check_arguments(n_classes: int, width: float, dropout: float | None, dense_units: int | None) -> None:
    if n_classes < 2:
        raise GalmorphError(f"a classifier needs at least 2 classes, got {n_classes}; choose another scheme")
    if width <= 0:
        raise GalmorphError(f"width must be positive, got {width}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise GalmorphError(f"dropout must be in [0, 1), got {dropout}")
    if dense_units is not None and dense_units < 1:
        raise GalmorphError(f"dense_units must be at least 1, got {dense_units}")


def _layer(name: str, raw: dict, shape: tuple[int, ...], width: float, dense_units: int | None,
           dropout: float | None) -> Layer:
    """The concrete layer of architectures.yaml entry `raw` on input `shape`, with its parameter counts."""
    kind = raw["type"]
    if kind == "conv":
        filters = max(1, int(round(raw["filters"] * width)))
        k = int(raw["kernel"])
        hh, ww, cc = shape
        if hh < k or ww < k:
            raise _TooSmall(f"a {k}x{k} convolution sees {hh}x{ww}")
        n = k * k * cc * filters + filters
        return Layer("conv", shape, (hh - k + 1, ww - k + 1, filters), filters=filters, kernel=k,
                     trainable_params=n, total_params=n)
    if kind == "bn":
        ch = shape[-1]
        return Layer("bn", shape, shape, trainable_params=2 * ch, total_params=4 * ch)
    if kind == "maxpool":
        s = int(raw["size"])
        hh, ww, cc = shape
        if hh < s or ww < s:
            raise _TooSmall(f"a {s}x{s} pooling sees {hh}x{ww}")
        return Layer("maxpool", shape, (hh // s, ww // s, cc), size=s)
    if kind == "flatten":
        return Layer("flatten", shape, (shape[0] * shape[1] * shape[2],))
    if kind == "dropout":
        return Layer("dropout", shape, shape, rate=float(raw["rate"] if dropout is None else dropout))
    if kind == "dense":
        units = int(raw["units"] if dense_units is None else dense_units)
        n = shape[0] * units + units
        return Layer("dense", shape, (units,), units=units, trainable_params=n, total_params=n)
    raise GalmorphError(f"architectures.yaml: {name} has unknown layer type {kind!r}")


def min_input_size(name: str, channels: int = 1, **options) -> int:
    """The smallest square input that network `name` accepts."""
    spec, _ = _options(name, options)
    if "zoo" in spec:
        return int(spec.get("min_input", ZOO_MIN_INPUT))
    for size in range(1, 512):
        try:
            resolve(name, (size, size, channels), 2, _explain=False, **options)
            return size
        except GalmorphError:
            continue
    raise GalmorphError(f"no input size up to 511 fits network {name}")


def _too_small(name, input_shape, detail, explain, options) -> GalmorphError:
    h, w, _ = input_shape
    if not explain:
        return GalmorphError(f"input {h}x{w} is too small for {name}")
    need = min_input_size(name, **options)
    return GalmorphError(
        f"input {h}x{w} is too small for {name} ({detail}); {name} needs at least "
        f"{need}x{need}: use larger images or a larger crop_fraction"
    )


def sentinel_values(name: str) -> dict:
    """What network `name` uses for the settings a run may leave to it: {"dropout": rate,
    "dense_units": units, "batchnorm": "true"/"false"}, each only where one value covers
    every such layer (the values `-1`, `0` and `default` of TrainConfig stand for)."""
    spec, opts = _options(name, {})
    out: dict = {}
    layers = spec.get("layers", [])
    rates = {layer["rate"] for layer in layers if layer["type"] == "dropout"} or \
        ({opts["dropout"]} if "zoo" in spec else set())
    units = {layer["units"] for layer in layers if layer["type"] == "dense"}
    if len(rates) == 1:
        out["dropout"] = float(rates.pop())
    if len(units) == 1:
        out["dense_units"] = float(units.pop())
    if "batchnorm" in opts:
        out["batchnorm"] = "true" if opts["batchnorm"] else "false"
    return out
