"""Reading and writing Galaxy10-format HDF5 files.

The format (astroNN's Galaxy10): dataset `images`, uint8, (N, H, W, 3), the SDSS colour
composite in RGB order (channel 0 = i, 1 = r, 2 = g); dataset `ans`, integer labels (N,);
optionally an attribute `class_names` and per-galaxy datasets such as `id`/`objid`, `ra`,
`dec`. Everything is checked on read, and each problem is a one-line GalmorphError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_path
from galmorph.data import integrity

ID_KEYS = ("id", "objid", "galaxy_id")


@dataclass
class RawData:
    """The contents of one Galaxy10-format file, checked."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...] | None
    ids: np.ndarray | None  # one id per galaxy (several images may share one), or None


def read(path: Path) -> RawData:
    """Load and check a Galaxy10-format file. Images are read into memory (uint8)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise GalmorphError(f"dataset file {path} does not exist; check the path or run `galmorph data download`")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise GalmorphError(
            f"{path} is not a readable HDF5 file ({_first_line(exc)}); delete it and download or prepare it again"
        ) from None
    with fh:
        missing = [k for k in ("images", "ans") if k not in fh]
        if missing:
            raise GalmorphError(
                f"{path} lacks the dataset(s) {', '.join(missing)} (has: {', '.join(sorted(fh.keys())) or 'none'}); "
                "a Galaxy10-format file needs `images` (N,H,W,3) uint8 and `ans` (N,) labels"
            )
        img_ds, ans_ds = fh["images"], fh["ans"]
        if img_ds.ndim != 4 or img_ds.shape[-1] != 3:
            raise GalmorphError(
                f"{path}: `images` has shape {img_ds.shape}; expected (N, H, W, 3) colour images in NHWC order"
            )
        if img_ds.dtype != np.uint8:
            raise GalmorphError(
                f"{path}: `images` has dtype {img_ds.dtype}; expected uint8 (0-255) as in Galaxy10: "
                "convert with np.clip(x, 0, 255).astype('uint8')"
            )
        if img_ds.shape[1] != img_ds.shape[2]:
            raise GalmorphError(f"{path}: images are {img_ds.shape[1]}x{img_ds.shape[2]}; galmorph needs square cutouts")
        if ans_ds.ndim != 1 or ans_ds.shape[0] != img_ds.shape[0]:
            raise GalmorphError(
                f"{path}: `ans` has shape {ans_ds.shape} but there are {img_ds.shape[0]} images; "
                "expected one integer label per image"
            )
        if img_ds.shape[0] == 0:
            raise GalmorphError(f"{path} holds no images; prepare or download it again")
        labels = _check_labels(np.asarray(ans_ds[()]), path)
        images = np.empty(img_ds.shape, dtype=np.uint8)
        img_ds.read_direct(images)
        names = fh.attrs.get("class_names")
        class_names = tuple(_to_str(n) for n in names) if names is not None else None
        ids = None
        for key in ID_KEYS:
            if key in fh and fh[key].shape == (images.shape[0],):
                ids = np.asarray(fh[key][()])
                break
    _check_images(images, path)
    if class_names is not None and labels.max() >= len(class_names):
        raise GalmorphError(
            f"{path}: label {labels.max()} is outside the file's {len(class_names)} class_names; "
            "fix the labels or the class_names attribute"
        )
    return RawData(images, labels, class_names, ids)


def write(path: Path, images: np.ndarray, labels: np.ndarray, class_names=None, *, checksum: bool = False,
          **extra) -> Path:
    """Write a Galaxy10-format file atomically (temporary name in the same folder, then rename).

    checksum: also record the file's SHA256 in its sidecar (galmorph.data.integrity), for
    files galmorph owns and verifies on load.
    """
    import h5py

    path = Path(path)
    digest = None
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("images", data=images, chunks=(1,) + images.shape[1:])
            fh.create_dataset("ans", data=labels)
            if class_names is not None:
                fh.attrs["class_names"] = list(class_names)
            for key, value in extra.items():
                fh.create_dataset(key, data=value)
        if checksum:
            digest = integrity.sha256_file(tmp)
    if digest is not None:
        integrity.remember(path, digest)
    return path


def _check_labels(labels: np.ndarray, path) -> np.ndarray:
    if labels.dtype.kind == "f":
        if np.isnan(labels).any():
            bad = int(np.flatnonzero(np.isnan(labels))[0])
            raise GalmorphError(f"{path}: label of image {bad} is NaN; every image needs an integer class label")
        if not np.all(labels == np.round(labels)):
            raise GalmorphError(f"{path}: labels are not whole numbers; `ans` must hold integer class indices")
    elif labels.dtype.kind not in "iu":
        raise GalmorphError(f"{path}: `ans` has dtype {labels.dtype}; expected integer class indices")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise GalmorphError(f"{path}: negative label {labels.min()}; class indices start at 0")
    return labels


def _check_images(images: np.ndarray, path) -> None:
    # A blank cutout (every pixel the same, e.g. outside the survey footprint) carries no
    # information and would silently teach the network a constant input.
    flat = images.reshape(images.shape[0], -1)
    blank = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if blank.size:
        raise GalmorphError(
            f"{path}: {blank.size} image(s) are blank (all pixels equal), first at index {blank[0]}; "
            "remove them from the file"
        )


def _to_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
