"""Reading and writing Galaxy10-format HDF5 files.

The format (astroNN's Galaxy10): dataset `images`, uint8, (N, H, W, 3), the SDSS colour
composite in RGB order (channel 0 = i, 1 = r, 2 = g); dataset `ans`, integer labels (N,);
optionally an attribute `class_names` and per-galaxy datasets such as `id`/`objid`, `ra`,
`dec`, `redshift`, `pxscale` (Galaxy10 DECaLS has these four; they are kept as columns).
Galaxy10 DECaLS has the same layout with Legacy Surveys composites (channel 0 = z, 1 = r,
2 = g; galmorph.data.bands). Everything is checked on read, and each problem is a one-line
GalmorphError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_path
from galmorph.core.paths import cache_dir
from galmorph.data import integrity, resize

ID_KEYS = ("id", "objid", "galaxy_id")
COLUMNS = ("ra", "dec", "redshift", "pxscale")  # per-image values kept with the images (e.g. to look galaxies up by position)
MAX_CLASSES = 1000  # more distinct labels than this are ids or measurements, not classes
CHUNK_ROWS = 128  # images per HDF5 chunk of the files galmorph writes: a unit that streams well (galmorph.data.stream)


@dataclass
class RawData:
    """The contents of one Galaxy10-format file, checked."""

    images: np.ndarray | None  # uint8 (N, H, W, 3); None when read with images=False
    labels: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...] | None
    ids: np.ndarray | None  # one id per galaxy (several images may share one), or None
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # COLUMNS the file has, one value per image


def read(path: Path, image_size: int = 0, *, images: bool = True) -> RawData:
    """Load and check a Galaxy10-format file. Images are read into memory (uint8); with
    `image_size` (> 0) they are area-averaged to that side a chunk at a time as they are read,
    so a 256 px file never sits in memory at full size (galmorph.data.resize). With
    `images=False` everything but the pixels is read and checked (galmorph.data.stream reads
    and checks those as they are needed).

    Every problem, a damaged file included, is a one-line GalmorphError naming the file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise GalmorphError(f"dataset file {path} does not exist; check the path or run `galmorph data download`")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise GalmorphError(
            f"{path} is not a readable HDF5 file ({first_line(exc)}): it is truncated, damaged or not HDF5 at all; "
            f"{remedy(path)}"
        ) from None
    with fh:
        img_ds, ans_ds = _dataset(fh, "images", path), _dataset(fh, "ans", path)
        _check_shapes(img_ds, ans_ds, path)
        labels = _check_labels(_read(ans_ds, path), path)
        n = img_ds.shape[0]
        if images:
            pixels = _read_images(img_ds, path, image_size)
        else:
            resize.check_size(img_ds.shape[1], image_size or img_ds.shape[1], path)
            pixels = None
        class_names = _class_names(fh, path)
        ids = None
        for key in ID_KEYS:
            if key in fh and isinstance(fh[key], h5py.Dataset) and fh[key].shape == (n,):
                ids = _read(fh[key], path)
                break
        columns = {key: _read(fh[key], path) for key in COLUMNS
                   if key in fh and isinstance(fh[key], h5py.Dataset) and fh[key].shape == (n,)}
    if pixels is not None:
        check_images(pixels, path)
    if class_names is not None and labels.max() >= len(class_names):
        bad = np.unique(labels[labels >= len(class_names)])
        raise GalmorphError(
            f"{path}: label(s) {_some(bad)} are outside the file's {len(class_names)} class_names; "
            "fix the labels or the class_names attribute"
        )
    return RawData(pixels, labels, class_names, ids, columns)


def remedy(path: Path) -> str:
    """What to do about a bad dataset file: galmorph's own caches may be deleted (they are made
    again); a user's file is the user's to fix, never to delete on galmorph's say-so."""
    try:
        ours = Path(path).resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        ours = False
    if ours:
        return f"it is in galmorph's cache ({cache_dir()}): delete it and galmorph downloads or builds it again"
    return "check that the path names the file you meant and that it was written or copied completely"


def _dataset(fh, name: str, path):
    """The HDF5 dataset `name` of an open file, or a one-line error."""
    import h5py

    try:
        ds = fh[name] if name in fh else None
    except (KeyError, OSError) as exc:  # a dangling link, a damaged object header
        raise GalmorphError(f"{path}: `{name}` cannot be opened ({first_line(exc)}); {remedy(path)}") from None
    if not isinstance(ds, h5py.Dataset):
        what = f"lacks the dataset `{name}`" if ds is None else f"has a group `{name}` where a dataset belongs"
        raise GalmorphError(
            f"{path} {what} (has: {', '.join(sorted(fh.keys())) or 'nothing'}); "
            "a Galaxy10-format file needs datasets `images` (N,H,W,3) uint8 and `ans` (N,) labels"
        )
    return ds


def _check_shapes(img_ds, ans_ds, path) -> None:
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
        raise GalmorphError(f"{path} holds no images; give a file with at least one labelled image")


def _read(ds, path) -> np.ndarray:
    """A whole dataset into memory; a damaged one (bad chunk, missing filter) is a one-line error."""
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise GalmorphError(
            f"{path}: dataset `{ds.name.lstrip('/')}` cannot be read ({first_line(exc)}): the file is damaged "
            f"or uses an HDF5 filter that is not installed; {remedy(path)}"
        ) from None


def _read_images(ds, path, image_size: int) -> np.ndarray:
    """`images`, downsampled to `image_size` (0 = native) chunk by chunk as they are read."""
    native = ds.shape[1]
    if not image_size or image_size == native:
        return _read(ds, path)
    resize.check_size(native, image_size, path)
    out = np.empty((ds.shape[0], image_size, image_size, ds.shape[3]), np.uint8)
    step = max(1, (1 << 26) // int(np.prod(ds.shape[1:])))  # about 64 MB of source images at a time
    for start in range(0, ds.shape[0], step):
        try:
            chunk = np.asarray(ds[start : start + step])
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise GalmorphError(f"{path}: dataset `images` cannot be read ({first_line(exc)}): the file is damaged "
                                f"or uses an HDF5 filter that is not installed; {remedy(path)}") from None
        out[start : start + step] = resize.downsample(chunk, image_size)
    return out


def _class_names(fh, path) -> tuple[str, ...] | None:
    """The optional `class_names` attribute: a list of distinct, non-empty names."""
    try:
        names = fh.attrs.get("class_names")
    except (OSError, TypeError, ValueError) as exc:
        raise GalmorphError(f"{path}: attribute class_names cannot be read ({first_line(exc)}); {remedy(path)}") from None
    if names is None:
        return None
    names = np.asarray(names)
    if names.ndim != 1 or names.dtype.kind not in "USO" or names.size > MAX_CLASSES:
        raise GalmorphError(
            f"{path}: attribute class_names is {names.dtype} of shape {names.shape}; "
            f"expected a list of at most {MAX_CLASSES} class names (strings)"
        )
    out = tuple(_to_str(n) for n in names)
    if len(set(out)) != len(out) or not all(n.strip() for n in out):
        raise GalmorphError(f"{path}: class_names {list(out)} has an empty or repeated name; give each class its own name")
    return out


def write(path: Path, images: np.ndarray, labels: np.ndarray, class_names=None, *, checksum: bool = False,
          compression: str | None = None, chunk_rows: int = CHUNK_ROWS, **extra) -> Path:
    """Write a Galaxy10-format file atomically (temporary name in the same folder, then rename),
    `images` in HDF5 chunks of `chunk_rows` images (`compression`: None, "gzip" or "lzf").

    checksum: also record the file's SHA256 in its sidecar (galmorph.data.integrity), for
    files galmorph owns and verifies on load.
    """
    import h5py

    path = Path(path)
    digest = None
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("images", data=images, chunks=image_chunks(images.shape, chunk_rows), compression=compression)
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


def image_chunks(shape, rows: int = CHUNK_ROWS) -> tuple[int, ...]:
    """The HDF5 chunk shape of `images` (N, H, W, 3): `rows` whole images (fewer in a smaller file)."""
    return (max(1, min(int(shape[0]), rows)),) + tuple(int(d) for d in shape[1:])


def _check_labels(labels: np.ndarray, path) -> np.ndarray:
    """int64 labels, or a one-line error naming the offending values: labels must be whole,
    finite, non-negative numbers (whole floats are accepted, as some writers store them)."""
    if labels.dtype.kind == "f":
        nan = np.isnan(labels)
        if nan.any():
            raise GalmorphError(f"{path}: label of image {int(np.flatnonzero(nan)[0])} is NaN; "
                                "every image needs an integer class label")
        bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (np.abs(labels) > 2**53)
        if bad.any():
            raise GalmorphError(
                f"{path}: `ans` holds non-integer labels {_some(np.unique(labels[bad]))} (first at image "
                f"{int(np.flatnonzero(bad)[0])}); class labels must be whole numbers 0, 1, 2, ..."
            )
    elif labels.dtype.kind not in "iu":
        raise GalmorphError(f"{path}: `ans` has dtype {labels.dtype}; expected integer class labels")
    elif labels.dtype.kind == "u" and labels.max() > np.iinfo(np.int64).max:
        raise GalmorphError(f"{path}: `ans` holds label {labels.max()}, too large for a class label; "
                            "class labels are small whole numbers 0, 1, 2, ...")
    if labels.min() < 0:
        raise GalmorphError(f"{path}: `ans` holds negative labels {_some(np.unique(labels[labels < 0]))}; "
                            "class labels are whole numbers from 0")
    return labels.astype(np.int64)


def infer_classes(labels: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct labels in increasing order, each image's index among them) for a file
    without class_names: the classes are the labels present, so the class count never grows
    with the size of a label value. More than MAX_CLASSES distinct labels is an error."""
    values, index = np.unique(labels, return_inverse=True)
    if values.size > MAX_CLASSES:
        raise GalmorphError(
            f"{path}: `ans` holds {values.size} distinct labels ({_some(values)}), more than the {MAX_CLASSES} "
            "classes galmorph accepts; `ans` must hold class labels, not ids or measurements"
        )
    return values, index.astype(np.int64).reshape(labels.shape)


def check_images(images: np.ndarray, path, first: int = 0) -> None:
    """No blank image among `images` (rows `first`, `first` + 1, ... of the file at `path`)."""
    # A blank cutout (every pixel the same, e.g. outside the survey footprint) carries no
    # information and would silently teach the network a constant input.
    flat = images.reshape(images.shape[0], -1)
    blank = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    if blank.size:
        where = "" if first == 0 else f" among rows {first}-{first + images.shape[0] - 1}"
        raise GalmorphError(
            f"{path}: {blank.size} image(s){where} are blank (all pixels equal), first at index {first + blank[0]}; "
            "remove them from the file"
        )


def _to_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _some(values, limit: int = 5) -> str:
    """`1, 2, 5000` or `1, 2, 3, 4, 5 and 7 more`: offending values, briefly."""
    values = [v.item() if hasattr(v, "item") else v for v in np.asarray(values).ravel()]
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def first_line(exc) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
