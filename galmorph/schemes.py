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

from galmorph.errors import GalmorphError
from galmorph.paths import load_yaml


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
    entry = catalogue(schemes_file).get(key, {})
    return ["native", *sorted(entry.get("schemes", {}))]


def get(key: str, name: str, native_class_names, schemes_file: str | None = None) -> Scheme:
    """The scheme `name` of dataset `key`, checked against the dataset's native classes."""
    native_class_names = tuple(native_class_names)
    entry = catalogue(schemes_file).get(key, {})
    if name == "default":
        name = entry.get("default", "native")
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
