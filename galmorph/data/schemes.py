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
    """All scheme definitions: experiments/schemes.yaml updated by the user's file(s), each
    checked for the layout of experiments/schemes.yaml (one-line errors naming the entry)."""
    data = {k: dict(v) for k, v in _checked(load_yaml("schemes.yaml"), "experiments/schemes.yaml").items()}
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
        for key, entry in _checked(user, f"schemes file {extra}").items():
            base = data.setdefault(key, {"schemes": {}})
            base["schemes"] = {**base.get("schemes", {}), **(entry.get("schemes") or {})}
            if "default" in entry:
                base["default"] = entry["default"]
    return data


LAYOUT = "see experiments/schemes.yaml: <dataset>: {default: <scheme>, schemes: {<scheme>: {classes: {<class>: [labels]}}}}"


def _checked(doc, source: str) -> dict:
    """`doc` if it has the layout of experiments/schemes.yaml, else a one-line error."""
    if not isinstance(doc, dict):
        raise GalmorphError(f"{source} must map dataset keys to schemes, not be a {_kind(doc)}; {LAYOUT}")
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            raise GalmorphError(f"{source}: entry {key!r} is a {_kind(entry)}, not a mapping; {LAYOUT}")
        if "default" in entry and not isinstance(entry["default"], str):
            raise GalmorphError(f"{source}: {key}.default is a {_kind(entry['default'])}; name a scheme")
        defs = entry.get("schemes") or {}
        if not isinstance(defs, dict):
            raise GalmorphError(f"{source}: {key}.schemes is a {_kind(defs)}, not a mapping of scheme names; {LAYOUT}")
        for name, spec in defs.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("classes"), dict):
                raise GalmorphError(f"{source}: scheme {key}/{name} needs `classes:`, a mapping of class names "
                                    f"to lists of native labels; {LAYOUT}")
            for cls, natives in spec["classes"].items():
                if natives is not None and not (isinstance(natives, list) and all(_is_int(n) for n in natives)):
                    raise GalmorphError(f"{source}: scheme {key}/{name}, class {cls}: {natives!r} is not a list of "
                                        "integer labels; write it like [0, 3]")
    return doc


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value) -> str:
    return {list: "list", str: "string", dict: "mapping", type(None): "empty value"}.get(type(value), type(value).__name__)


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


def _derived(key: str, name: str, native_class_names, schemes_file, label_values=None) -> Scheme:
    base_name, spec = name.split(DERIVED, 1)
    base = get(key, "default" if base_name in ("", "pair", "default") else base_name, native_class_names, schemes_file,
               label_values)
    groups = [[c.strip() for c in g.split(MERGE) if c.strip()] for g in spec.split(VS)]
    lut = regroup(base.class_names, groups)
    mapping = {native: int(lut[cls]) for native, cls in base.native_to_class.items() if lut[cls] >= 0}
    classes = tuple(MERGE.join(g) for g in groups)
    return Scheme(derived_name(base.name, groups), key, classes, mapping,
                  f"{' vs '.join(classes)}, derived from scheme {base.name}")


def get(key: str, name: str, native_class_names, schemes_file: str | None = None, label_values=None) -> Scheme:
    """The scheme `name` of dataset `key`, checked against the dataset's native classes.

    label_values: the file's label of each native class, when the classes were inferred from
    the labels present (galmorph.data.hdf5.infer_classes); a scheme's native labels are then
    those values. Default: native class i has label i.
    """
    native_class_names = tuple(native_class_names)
    entry = catalogue(schemes_file).get(key, {})
    if name == "default":
        name = entry.get("default", "native")
    if DERIVED in name:
        return _derived(key, name, native_class_names, schemes_file, label_values)
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
    values = range(len(native_class_names)) if label_values is None else [int(v) for v in label_values]
    position = {v: i for i, v in enumerate(values)}
    mapping: dict[int, int] = {}
    for idx, (cls, natives) in enumerate(classes.items()):
        for native in natives or []:
            if native not in position:
                have = (f"0..{len(values) - 1}" if label_values is None
                        else ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else ""))
                raise GalmorphError(
                    f"scheme {key}/{name}: class {cls} lists native label {native!r}, but {key} has labels "
                    f"{have}; fix the scheme"
                )
            if position[native] in mapping:
                raise GalmorphError(f"scheme {key}/{name}: native label {native} is listed in two classes; list it once")
            mapping[position[native]] = idx
    return Scheme(name, key, tuple(str(c) for c in classes), mapping, str(spec.get("description", "")).strip())
