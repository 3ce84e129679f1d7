"""Search spaces: YAML files (experiments/search_spaces/<model>.yaml) of Optuna parameters, each
setting one TUNABLE TrainConfig field, optionally only `when` an earlier categorical parameter
takes given values. `load_space` checks a file; `sample(trial, space)` turns a trial into
TrainConfig overrides."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from galmorph.config import TrainConfig
from galmorph.core import specs
from galmorph.core.errors import GalmorphError
from galmorph.core.paths import experiments_dir
from galmorph.workflows.tune.config import TUNABLE


@dataclass(frozen=True)
class Param:
    """One entry of a search space: an Optuna parameter that sets one TrainConfig field."""

    name: str
    field: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple = ()  # ((param name, (allowed values...)), ...)

    def candidates(self) -> list:
        """Values that bound this parameter: checked against TrainConfig.validate()."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space: its parameters in file order (a `when` refers only to earlier
    ones, so `sample` can go through them in order), and the file and its text."""

    model: str
    params: tuple[Param, ...]
    path: Path
    text: str

    def fields(self) -> list[str]:
        return sorted({p.field for p in self.params})


_PARAM_KEYS = {"type", "field", "low", "high", "log", "step", "choices", "when"}


def space_path(model: str, search_space: str = "") -> Path:
    if search_space:
        path = Path(search_space).expanduser()
    else:
        path = experiments_dir() / "search_spaces" / f"{model}.yaml"
        if not path.is_file() and specs.is_zoo(model):  # one space for the zoo networks
            path = path.with_name("zoo.yaml")
    if not path.is_file():
        raise GalmorphError(f"search space {path} does not exist; write one like experiments/search_spaces/c2.yaml")
    return path


def load_space(model: str, search_space: str = "") -> SearchSpace:
    """Read and check a search space YAML file; raise a one-line GalmorphError on the first problem."""
    import yaml

    path = space_path(model, search_space)
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GalmorphError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    where = path.name
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict) or not doc["params"]:
        raise GalmorphError(f"{where}: expected a mapping with `model` and a non-empty `params` mapping")
    unknown = set(doc) - {"model", "params", "description"}
    if unknown:
        raise GalmorphError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; allowed: model, params, description")
    models = doc.get("model") if isinstance(doc.get("model"), list) else [doc.get("model")]
    if model not in models:
        raise GalmorphError(f"{where} is a search space for model {doc.get('model')!r}, not {model!r}")
    config_fields = {f.name: f for f in fields(TrainConfig)}
    params: list[Param] = []
    for name, raw in doc["params"].items():
        params.append(_parse_param(where, str(name), raw, config_fields, {p.name: p for p in params}))
    _check_fields_set_once(where, params)
    base = TrainConfig(model=model)
    for p in params:
        for value in p.candidates():
            try:
                base.replace(**{p.field: value}).validate()
            except GalmorphError as exc:
                raise GalmorphError(f"{where}: {p.name} = {value!r} is not a valid {p.field}: {exc}") from None
    return SearchSpace(model, tuple(params), path, text)


def _parse_param(where, name, raw, config_fields, earlier) -> Param:
    if not isinstance(raw, dict):
        raise GalmorphError(f"{where}: {name} must be a mapping with a `type`")
    unknown = set(raw) - _PARAM_KEYS
    if unknown:
        raise GalmorphError(f"{where}: {name} has unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_PARAM_KEYS))}")
    target = raw.get("field", name)
    if target not in config_fields:
        raise GalmorphError(f"{where}: {name} sets {target!r}, which is no TrainConfig field")
    if target not in TUNABLE:
        raise GalmorphError(f"{where}: {target} cannot be tuned (it fixes the data or the bookkeeping of a study); "
                            f"tunable: {', '.join(TUNABLE)}")
    kind = raw.get("type")
    field_type = config_fields[target].type
    field_type = field_type if isinstance(field_type, str) else field_type.__name__
    when = _parse_when(where, name, raw.get("when"), earlier)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise GalmorphError(f"{where}: {name} is categorical and needs a non-empty list `choices`")
        if len(set(map(repr, choices))) != len(choices):
            raise GalmorphError(f"{where}: {name} lists a choice twice")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)) or not _fits(field_type, c):
                raise GalmorphError(f"{where}: {name} choice {c!r} is not a {field_type} (field {target})")
        extra = set(raw) - {"type", "field", "choices", "when"}
        if extra:
            raise GalmorphError(f"{where}: {name} is categorical; {', '.join(sorted(extra))} do not apply")
        return Param(name, target, kind, choices=tuple(choices), when=when)
    if kind in ("float", "int"):
        if field_type == "str" or (kind == "float" and field_type == "int"):
            raise GalmorphError(f"{where}: {name} is a {kind} but {target} is a {field_type}")
        low, high = raw.get("low"), raw.get("high")
        for key, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not isinstance(value, int)):
                raise GalmorphError(f"{where}: {name} needs a numeric `{key}` ({kind}), got {value!r}")
        if not low < high:
            raise GalmorphError(f"{where}: {name} needs low < high, got {low} and {high}")
        log, step = bool(raw.get("log", False)), raw.get("step")
        if log and low <= 0:
            raise GalmorphError(f"{where}: {name} is log-scaled and needs low > 0, got {low}")
        if log and step is not None:
            raise GalmorphError(f"{where}: {name}: `log` and `step` cannot be combined")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            raise GalmorphError(f"{where}: {name} needs a positive `step`, got {step!r}")
        return Param(name, target, kind, low=low, high=high, log=log, step=step, when=when)
    raise GalmorphError(f"{where}: {name} has type {kind!r}; use float, int or categorical")


def _fits(field_type: str, value) -> bool:
    if field_type == "str":
        return isinstance(value, str)
    if field_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if field_type == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, bool)


def _parse_when(where, name, raw, earlier) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise GalmorphError(f"{where}: {name}: `when` must map an earlier parameter to a list of its values")
    out = []
    for parent, allowed in raw.items():
        if parent not in earlier:
            raise GalmorphError(f"{where}: {name} depends on {parent!r}, which is not a parameter listed before it")
        if earlier[parent].kind != "categorical":
            raise GalmorphError(f"{where}: {name} depends on {parent}, which must be categorical")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        bad = [a for a in allowed if a not in earlier[parent].choices]
        if bad or not allowed:
            raise GalmorphError(f"{where}: {name} depends on {parent} taking {bad or allowed}, not among its choices "
                                f"{list(earlier[parent].choices)}")
        out.append((parent, tuple(allowed)))
    return tuple(out)


def _check_fields_set_once(where, params: list[Param]) -> None:
    """Several entries may set one field only when conditions on one parameter keep them apart."""
    by_field: dict[str, list[Param]] = {}
    for p in params:
        by_field.setdefault(p.field, []).append(p)
    for target, group in by_field.items():
        if len(group) < 2:
            continue
        parents = {tuple(k for k, _ in p.when) for p in group}
        if any(not p.when for p in group) or len(parents) != 1 or len(next(iter(parents))) != 1:
            raise GalmorphError(f"{where}: {', '.join(p.name for p in group)} all set {target}; give each a `when` "
                                "on the same parameter so that only one applies")
        seen: set = set()
        for p in group:
            values = set(p.when[0][1])
            if seen & values:
                raise GalmorphError(f"{where}: {', '.join(p.name for p in group)} set {target} for overlapping "
                                    f"values {sorted(map(str, seen & values))} of {p.when[0][0]}")
            seen |= values


def baseline(space: SearchSpace, base: TrainConfig) -> tuple[dict, dict]:
    """The parameter values of `space` that make trial `base` itself (a study's trial 0):
    (params for study.enqueue_trial, unexpressed). A field's sentinel takes its meaning
    (dropout -1 and dense_units 0: the architecture's; batchnorm default: its option).
    `unexpressed`: the applicable parameters whose base value lies outside their range or
    choices (e.g. batch 400 against choices up to 256); trial 0 does not suggest those and
    keeps the base value (`sample(..., fixed=unexpressed)`), so that it is exactly `base`."""
    params: dict = {}
    unexpressed: dict = {}
    chosen: dict = {}
    meaning = _architecture_values(base)
    for p in space.params:
        if any(parent not in chosen or chosen[parent] not in allowed for parent, allowed in p.when):
            continue
        value = meaning.get(p.field, getattr(base, p.field))
        chosen[p.name] = value
        (params if _contains(p, value) else unexpressed)[p.name] = value
    return params, unexpressed


def _architecture_values(base: TrainConfig) -> dict:
    """What base's sentinel settings stand for in its network's spec (only where unambiguous)."""

    spec = specs.resolve(base.model, (128, 128, 1), 2, **base.arch_kwargs())
    out = {}
    rates = {layer.rate for layer in spec.layers if layer.type == "dropout"}
    units = {layer.units for layer in spec.layers if layer.type == "dense"}
    if base.dropout < 0 and len(rates) == 1:
        out["dropout"] = rates.pop()
    if base.dense_units == 0 and len(units) == 1:
        out["dense_units"] = units.pop()
    if base.batchnorm == "default" and "batchnorm" in spec.options:
        out["batchnorm"] = str(bool(spec.options["batchnorm"])).lower()
    return out


def _contains(p: Param, value) -> bool:
    if p.kind == "categorical":
        return any(c == value and (type(c) is type(value) or _number(c) and _number(value)) for c in p.choices)
    if not _number(value) or not p.low <= value <= p.high:
        return False
    if p.kind == "int" and value != int(value):
        return False
    step = p.step or (1 if p.kind == "int" else None)
    return step is None or abs((value - p.low) / step - round((value - p.low) / step)) < 1e-9


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sample(trial, space: SearchSpace, fixed: dict | None = None) -> dict:
    """Suggest every applicable parameter of `space`; return TrainConfig overrides {field: value}.
    `fixed` ({param name: value}, see `baseline`): not suggested and not overridden, but taken
    as chosen for the `when` of later parameters."""
    chosen: dict = {}
    overrides: dict = {}
    fixed = fixed or {}
    for p in space.params:
        if any(parent not in chosen or chosen[parent] not in allowed for parent, allowed in p.when):
            continue
        if p.name in fixed:
            chosen[p.name] = fixed[p.name]
            continue
        if p.kind == "categorical":
            value = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            value = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=int(p.step or 1))
        else:
            value = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        chosen[p.name] = value
        overrides[p.field] = value
    return overrides
