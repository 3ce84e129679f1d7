"""Declaring settings: `option` (and `nested`, `option_of`) on the fields of a config
dataclass, and what is derived from those declarations: the flat `Setting`s (one CLI flag and
MLproject parameter each, `settings_of`), building a config from flat values (`build`,
`flat`), checking choices and reading values back from logged MLflow parameters
(`from_param`, `parse_bool`).

Neutral and free of galmorph's other layers (it imports only core.errors), so that any layer
declares its settings with it: `galmorph.config.TrainConfig` and the workflows' configs as
much as `galmorph.data.nair2010.PrepareConfig`, which must not import galmorph.config (that
imports the data layer).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from galmorph.core.errors import GalmorphError

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def option(default, help, choices=None, mlproject=True, required=False, preset=False):
    """A setting: its default, help text, allowed values, and whether MLproject entry points
    expose it (False: process-level settings such as the experiment name, which `mlflow run`
    chooses itself). `required`: no default; the CLI flag and the MLproject parameter must be given.
    `preset`: a preset of experiments/presets.yaml may set it (galmorph.presets), so the CLI and
    MLproject must know whether it was given: its flag has no default of its own (a value not
    given comes from the preset, else `default`), and MLproject passes it only when given."""
    return field(default=default, metadata={"help": help, "choices": choices, "mlproject": mlproject,
                                            "required": required, "preset": preset})


def option_of(cls, name: str):
    """The option `name` of `cls` again, for a config that passes it on to `cls` (e.g. retrain's
    --register-as, handed to TrainConfig): one default and one help text for both."""
    declared = {f.name: f for f in fields(cls)}[name]
    return field(default=declared.default, metadata=declared.metadata)


def nested(cls, help: str = "", exclude: tuple = (), defaults: dict | None = None):
    """A field holding a whole config of class `cls` (e.g. the TrainConfig every Optuna trial
    starts from). Its settings appear as flags and MLproject parameters of the outer config,
    except `exclude`; `defaults` overrides some of cls's defaults there."""
    defaults = dict(defaults or {})
    return field(default_factory=lambda: cls(**defaults),
                 metadata={"nested": cls, "help": help, "exclude": tuple(exclude), "defaults": defaults})


@dataclass(frozen=True)
class Setting:
    """One flat setting of a config class: a CLI flag and (if `mlproject`) an MLproject parameter."""

    name: str
    type: type
    default: object
    help: str
    choices: tuple | None
    mlproject: bool
    required: bool
    owner: str  # "" for a field of the class itself, else the nested field's name
    presettable: bool = False  # a preset may set it (option(..., preset=True))

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings_of(cls) -> list[Setting]:
    """The flat settings of a config class, nested configs expanded in place."""
    out: list[Setting] = []
    for f in fields(cls):
        inner = f.metadata.get("nested")
        if inner is None:
            out.append(_setting(f, "", f.default))
            continue
        over = f.metadata["defaults"]
        for g in fields(inner):
            if g.name not in f.metadata["exclude"] and not g.metadata.get("nested"):
                out.append(_setting(g, f.name, over.get(g.name, g.default)))
    names = [s.name for s in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise TypeError(f"{cls.__name__}: settings declared twice: {', '.join(sorted(dupes))}")
    return out


def _setting(f, owner: str, default) -> Setting:
    required = f.metadata.get("required", False)
    return Setting(f.name, TYPES[f.type if isinstance(f.type, str) else f.type.__name__],
                   None if required or default is MISSING else default, f.metadata.get("help", ""),
                   f.metadata.get("choices"), f.metadata.get("mlproject", True), required, owner,
                   f.metadata.get("preset", False))


def build(cls, values: dict):
    """An instance of `cls` from flat setting values (missing ones take their defaults)."""
    kwargs, inner_values = {}, {}
    for s in settings_of(cls):
        if s.name in values:
            (inner_values.setdefault(s.owner, {}) if s.owner else kwargs)[s.name] = values[s.name]
    for f in fields(cls):
        inner = f.metadata.get("nested")
        if inner is not None:
            kwargs[f.name] = inner(**{**f.metadata["defaults"], **inner_values.get(f.name, {})})
    return cls(**kwargs)


def flat(config) -> dict:
    """The flat settings of a config instance, nested configs expanded (the inverse of `build`)."""
    out = {}
    for s in settings_of(type(config)):
        out[s.name] = getattr(getattr(config, s.owner) if s.owner else config, s.name)
    return out


def check_choices(config) -> None:
    """A one-line error for the first setting of `config` outside its allowed values."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise GalmorphError(f"unknown {f.name} {getattr(config, f.name)!r}; choose one of {', '.join(choices)}")


def from_param(setting: Setting, text):
    """A setting's value from its logged MLflow parameter (text) or a default: bools as
    parse_bool reads them, ints through float ("30.0"), the rest by the setting's type."""
    if setting.type is bool:
        return parse_bool(text)
    if setting.type is int:
        return int(float(text))
    return setting.type(text)


def parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise GalmorphError(f"expected true or false, got {text!r}")
