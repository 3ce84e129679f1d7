"""Class schemes (experiments/schemes.yaml): how native labels become learned classes.

A scheme maps each learned class to a list of native labels; native labels it does not
list are dropped. `native` (every native class, in order) exists for every dataset, and
`default` means the dataset's declared default. Users add schemes in their own YAML file
(same layout) through `schemes_file=` or the GALMORPH_SCHEMES environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.paths import load_yaml


@dataclass(frozen=True)
class Scheme:
    name: str
    key: str
    class_names: tuple[str, ...]
    native_to_class: dict  # native label -> learned class index; absent = dropped
    description: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def apply(self, native_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask, learned labels of the kept images) for an array of native labels."""
        lut = np.full(int(native_labels.max()) + 1, -1, dtype=np.int64)
        for native, cls in self.native_to_class.items():
            if native < lut.size:
                lut[native] = cls
        mapped = lut[native_labels]
        keep = mapped >= 0
        return keep, mapped[keep]


def catalogue(schemes_file: str | None = None) -> dict:
    """All scheme definitions: experiments/schemes.yaml updated by the user's file(s)."""
    data = {k: dict(v) for k, v in load_yaml("schemes.yaml").items()}
    extra = schemes_file or os.environ.get("GALMORPH_SCHEMES")
    if extra:
        import yaml

        try:
            with open(extra) as fh:
                user = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise GalmorphError(f"cannot read schemes file {extra} ({exc.strerror}); check the path") from None
        except yaml.YAMLError as exc:
            raise GalmorphError(f"schemes file {extra} is not valid YAML ({str(exc).splitlines()[0]}); fix its syntax") from None
        if not isinstance(user, dict):
            raise GalmorphError(f"schemes file {extra} must map dataset keys to schemes (see experiments/schemes.yaml)")
        for key, entry in user.items():
            base = data.setdefault(key, {"schemes": {}})
            base["schemes"] = {**base.get("schemes", {}), **(entry.get("schemes") or {})}
            if "default" in entry:
                base["default"] = entry["default"]
    return data


def names(key: str, schemes_file: str | None = None) -> list[str]:
    """Declared schemes, then the class pairs of the default scheme (`4way:E-vs-Sp`, ...)."""
    entry = catalogue(schemes_file).get(key, {})
    defs = entry.get("schemes", {})
    default = entry.get("default", "native")
    classes = (defs.get(default) or {}).get("classes")
    pairs = pair_names(default, list(classes)) if isinstance(classes, dict) else []
    return ["native", *sorted(defs), *pairs]


# Derived schemes: `<base>:<group>-vs-<group>[-vs-...]`, a group being class names of the
# base scheme joined by "/". `4way:E-vs-Sp` keeps E and Sp only (a binary pair);
# `4way:E/S0-vs-Sp/Irr` merges classes (a node of a hierarchical classifier). `pair:` and
# `default:` name the dataset's default scheme as the base.
DERIVED, VS, MERGE = ":", "-vs-", "/"


def pair_names(base: str, class_names) -> list[str]:
    """Every one-vs-one derived scheme of `base` (the paper's binary classifiers)."""
    from itertools import combinations

    return [f"{base}{DERIVED}{a}{VS}{b}" for a, b in combinations(class_names, 2)]


def derived_name(base: str, groups) -> str:
    """The derived scheme name of `groups` (lists of base class names) over scheme `base`."""
    return base + DERIVED + VS.join(MERGE.join(g) for g in groups)


def regroup(class_names, groups) -> np.ndarray:
    """int64 lookup: base class index -> group index, -1 for classes no group lists."""
    class_names = [str(c) for c in class_names]
    lut = np.full(len(class_names), -1, dtype=np.int64)
    if len(groups) < 2:
        raise GalmorphError(f"a derived scheme needs at least two groups separated by {VS!r}, got {list(groups)}")
    for gi, group in enumerate(groups):
        if not group:
            raise GalmorphError(f"derived scheme group {gi + 1} is empty; name at least one class in it")
        for name in group:
            if name not in class_names:
                raise GalmorphError(f"class {name!r} is not in the base scheme (classes: {', '.join(class_names)}); "
                                    "use those names")
            idx = class_names.index(name)
            if lut[idx] >= 0:
                raise GalmorphError(f"class {name!r} is in two groups of the derived scheme; list it once")
            lut[idx] = gi
    return lut


def _derived(key: str, name: str, native_class_names, schemes_file) -> Scheme:
    base_name, spec = name.split(DERIVED, 1)
    base = get(key, "default" if base_name in ("", "pair", "default") else base_name, native_class_names, schemes_file)
    groups = [[c.strip() for c in g.split(MERGE) if c.strip()] for g in spec.split(VS)]
    lut = regroup(base.class_names, groups)
    mapping = {native: int(lut[cls]) for native, cls in base.native_to_class.items() if lut[cls] >= 0}
    classes = tuple(MERGE.join(g) for g in groups)
    return Scheme(derived_name(base.name, groups), key, classes, mapping,
                  f"{' vs '.join(classes)}, derived from scheme {base.name}")


def get(key: str, name: str, native_class_names, schemes_file: str | None = None) -> Scheme:
    """The scheme `name` of dataset `key`, checked against the dataset's native classes."""
    native_class_names = tuple(native_class_names)
    entry = catalogue(schemes_file).get(key, {})
    if name == "default":
        name = entry.get("default", "native")
    if DERIVED in name:
        return _derived(key, name, native_class_names, schemes_file)
    if name == "native":
        return Scheme("native", key, native_class_names, {i: i for i in range(len(native_class_names))},
                      "every native class")
    defs = entry.get("schemes", {})
    if name not in defs:
        raise GalmorphError(
            f"unknown scheme {name!r} for dataset {key}; choose one of {', '.join(names(key, schemes_file))} "
            "or add it to a schemes file (--schemes-file)"
        )
    spec = defs[name]
    classes = spec.get("classes")
    if not isinstance(classes, dict) or len(classes) < 2:
        raise GalmorphError(f"scheme {key}/{name} must list at least two classes, each with its native labels")
    mapping: dict[int, int] = {}
    for idx, (cls, natives) in enumerate(classes.items()):
        for native in natives or []:
            if not isinstance(native, int) or not 0 <= native < len(native_class_names):
                raise GalmorphError(
                    f"scheme {key}/{name}: class {cls} lists native label {native!r}, but {key} has labels "
                    f"0..{len(native_class_names) - 1}; fix the scheme"
                )
            if native in mapping:
                raise GalmorphError(f"scheme {key}/{name}: native label {native} is listed in two classes; list it once")
            mapping[native] = idx
    return Scheme(name, key, tuple(str(c) for c in classes), mapping, str(spec.get("description", "")).strip())
