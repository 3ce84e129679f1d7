"""Training presets (experiments/presets.yaml): named values for the presettable settings of
TrainConfig, resolved once, here, for every entry point.

Precedence, lowest first: a setting's built-in default (galmorph.config.option), a command's
own default for it (`nested(..., defaults=...)`, e.g. tune's 10 epochs), the preset's value,
an explicitly given value. "Given" means: a flag on the command line (presettable flags have
no argparse default, galmorph.cli), a `-P name=value` of `mlflow run` (MLproject declares no
presettable parameter, so MLflow passes one, as `--name value`, only when it is given: a
declared parameter is always passed with its default and logged as such, which would make a
preset's value unreachable and the logged value wrong), or a key of `resolve`'s `given`.

`TrainConfig(...)` itself takes its values literally (the built-in defaults for the rest); its
`preset` field then only names the preset, and the run logs which presettable settings differ
from it (`preset_overrides`). `resolve(TrainConfig, {...})` is the preset-aware constructor.
"""

from __future__ import annotations

import functools

from galmorph.config import TrainConfig, build, parse_bool, settings_of
from galmorph.core import paths, specs
from galmorph.core.errors import GalmorphError

FILE = "presets.yaml"
NONE = "none"  # no preset: the built-in defaults


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, dict]:
    raw = paths.load_yaml(FILE)
    presettable = {s.name: s for s in settings_of(TrainConfig) if s.presettable}
    out = {}
    for name, body in raw.items():
        if name == NONE or not isinstance(body, dict):
            raise GalmorphError(f"{FILE}: preset {name!r} must be a mapping of settings (and not be called {NONE!r})")
        body = dict(body)
        body.pop("description", None)
        for key, value in body.items():
            if key not in presettable:
                raise GalmorphError(f"{FILE}: preset {name} sets {key!r}, which presets cannot set; "
                                    f"presettable: {', '.join(presettable)}")
            if isinstance(value, dict):
                unknown = set(value) - set(specs.available())
                if unknown:
                    raise GalmorphError(f"{FILE}: preset {name}, {key}: unknown network(s) {', '.join(sorted(unknown))}; "
                                        f"networks: {', '.join(specs.available())}")
                body[key] = {m: _typed(presettable[key], v, name) for m, v in value.items()}
            else:
                body[key] = _typed(presettable[key], value, name)
        out[str(name)] = body
    return out


def _typed(setting, value, preset: str):
    """A YAML value as the setting's type (YAML reads `false` as a bool, `1e-4` as a string)."""
    try:
        if setting.type is bool:
            value = parse_bool(value)
        elif setting.type is str:
            value = str(value).lower() if isinstance(value, bool) else str(value)
        elif setting.type is int:
            if float(value) != int(float(value)):
                raise ValueError(value)
            value = int(float(value))
        else:
            value = float(value)
    except (TypeError, ValueError, GalmorphError):
        raise GalmorphError(f"{FILE}: preset {preset}, {setting.name}: {value!r} is not a {setting.type.__name__}") from None
    if setting.choices and value not in setting.choices:
        raise GalmorphError(f"{FILE}: preset {preset}, {setting.name}: {value!r} is not one of {', '.join(setting.choices)}")
    return value


def names() -> list[str]:
    """The presets one can choose, `none` included."""
    return [*_load(), NONE]


def check_name(name: str) -> None:
    if name != NONE and name not in _load():
        raise GalmorphError(f"unknown preset {name!r}; choose one of {', '.join(names())}")


def values(name: str, model: str) -> dict:
    """The settings preset `name` gives network `model` (none for the preset `none`)."""
    check_name(name)
    if name == NONE:
        return {}
    out = {}
    for key, value in _load()[name].items():
        if isinstance(value, dict):
            if model in value:
                out[key] = value[model]
        else:
            out[key] = value
    return out


def resolve(cls, given: dict):
    """An instance of config class `cls` (TrainConfig or one nesting a TrainConfig) from the
    explicitly given flat settings `given`: the preset named there (else the default) fills
    the presettable settings not given."""
    settings = {s.name: s for s in settings_of(cls)}
    if "preset" not in settings:  # no TrainConfig inside: nothing to resolve
        return build(cls, given)
    name = given.get("preset", settings["preset"].default)
    model = given.get("model", settings["model"].default)
    # only what cls exposes: a nested config may exclude some settings (tune: tta)
    preset = {k: v for k, v in values(name, model).items() if k in settings}
    return build(cls, {**preset, **given})


def overrides(config: TrainConfig) -> list[str]:
    """The presettable settings whose values differ from what config.preset gives (a preset's
    silent settings compare with the built-in defaults)."""
    if config.preset != NONE and config.preset not in _load():
        return []
    want = {**{s.name: s.default for s in settings_of(TrainConfig) if s.presettable},
            **values(config.preset, config.model)}
    return sorted(k for k, v in want.items() if getattr(config, k) != v)


def of(**given) -> TrainConfig:
    """`resolve(TrainConfig, given)`: e.g. `presets.of(preset="paper", model="c1", epochs=5)`."""
    return resolve(TrainConfig, given)


def describe(name: str) -> str:
    """The preset's description (empty for `none`)."""
    check_name(name)
    return "" if name == NONE else str(paths.load_yaml(FILE)[name].get("description", "")).strip()

