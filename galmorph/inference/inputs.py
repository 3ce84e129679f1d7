"""A user's galaxies as the model's uint8 (side, side, 3) images: JPEG/PNG files and folders
of them, Galaxy10-format .h5 files, FITS files and catalogues of coordinates.

Every input path becomes a `Source`: it knows how many galaxies it holds (for the progress
bar) and yields one `Entry` per galaxy, in a stable order, either with its image or with
the one-line reason it has none; `entries(start)` yields them from the start-th on (a
resumed prediction skips what is done without reading it), holding only a block of them
in memory at a time whatever the input's length. A broken galaxy is an entry with an error, never an
exception: the pipeline writes it to the errors file and predicts the others. Only what
makes the whole command meaningless (a path that does not exist, a file type galmorph does
not read, a folder without images) is a GalmorphError.

Geometry: an image of any size is centre-cropped to a square of side `crop` x its shorter
side, then resized to the model's side: area averaging by galmorph.data.resize (what
`--image-size` does to training data) when shrinking, Pillow's bicubic when enlarging.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.data import resize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
H5_SUFFIXES = (".h5", ".hdf5")
CSV_SUFFIXES = (".csv",)
H5_CHUNK = 256  # rows of an .h5 file read at once: bounds memory whatever the file's size


@dataclass
class Entry:
    """One galaxy: `source` names it in the output (a path, `file.h5[row]` or a catalogue id);
    `image` is uint8 (side, side, 3) or None with `error` saying why; `meta` holds the id,
    ra and dec where the input gives them."""

    source: str
    image: np.ndarray | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Geometry:
    """How an image becomes the model's input: the model's side in pixels and the fraction
    of the shorter side kept by the centre crop."""

    side: int
    crop: float = 1.0


def suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in FITS_SUFFIXES if name.endswith(s)), path.suffix.lower())


def one_line(text) -> str:
    return " ".join(str(text).split())[:300]


def to_side(im, geometry: Geometry) -> np.ndarray:
    """A PIL RGB image centre-cropped and resized as `geometry` says; uint8 (side, side, 3)."""
    from PIL import Image

    w, h = im.size
    keep = max(1, round(min(w, h) * geometry.crop))
    if (w, h) != (keep, keep):
        left, top = (w - keep) // 2, (h - keep) // 2
        im = im.crop((left, top, left + keep, top + keep))
    if keep > geometry.side:  # the area averaging --image-size applies to training data
        return resize.downsample(np.asarray(im, dtype=np.uint8)[None], geometry.side)[0]
    if keep < geometry.side:
        im = im.resize((geometry.side, geometry.side), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def array_to_side(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """uint8 (H, W, 3) centre-cropped and resized as `geometry` says."""
    if image.shape[:2] == (geometry.side, geometry.side) and geometry.crop == 1:
        return image
    from PIL import Image

    return to_side(Image.fromarray(image, "RGB"), geometry)


def read_image(path: Path, geometry: Geometry) -> np.ndarray:
    """A JPEG or PNG colour image as the model's input. ValueError with a one-line reason for
    an empty, undecodable or truncated file, and for grayscale or transparent images (a
    galmorph model reads the colour channels of an RGB composite; converting would invent
    them, or hide what the alpha channel cut away)."""
    from PIL import Image

    if path.stat().st_size == 0:
        raise ValueError("empty file")
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()  # decodes everything: a truncated file fails here, not later
            mode = im.mode
            if mode == "P" and "transparency" not in im.info:
                im, mode = im.convert("RGB"), "RGB"
            if mode != "RGB":
                raise ValueError(_mode_problem(mode, fmt))
            return to_side(im, geometry)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(one_line(f"not a decodable image ({type(exc).__name__}: {exc})")) from None


def _mode_problem(mode: str, fmt: str | None) -> str:
    what = fmt or "image"
    if "A" in mode or mode in ("P", "PA"):
        return f"{what} with an alpha channel (mode {mode}); save it as RGB without transparency"
    if mode in ("L", "1", "I", "I;16", "F"):
        return f"grayscale {what} (mode {mode}); the model reads RGB colour composites (a FITS file takes one band)"
    return f"{what} in mode {mode}, not RGB; save it as an 8-bit RGB image"


class FileSource:
    """One JPEG, PNG or FITS file, or a folder of them (recursive, sorted by path)."""

    kind = "images"

    def __init__(self, files: list[Path], geometry: Geometry, fits_reader=None):
        self.files, self.geometry, self.fits_reader = files, geometry, fits_reader

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Entry]:
        return self.entries()

    def entries(self, start: int = 0) -> Iterator[Entry]:
        for path in self.files[start:]:
            try:
                if suffix(path) in FITS_SUFFIXES:
                    image = self.fits_reader(path, self.geometry)
                else:
                    image = read_image(path, self.geometry)
            except (ValueError, OSError) as exc:
                yield Entry(str(path), error=one_line(exc) or type(exc).__name__)
            else:
                yield Entry(str(path), image)


class H5Source:
    """A Galaxy10-format .h5 file: dataset `images`, uint8 (N, H, W, 3), read H5_CHUNK rows at
    a time; `id` (or `objid`), `ra` and `dec` datasets of length N are carried along. The
    source of row k is `file.h5[k]`. A file that cannot be read this way is one error entry."""

    kind = "h5"

    def __init__(self, path: Path, geometry: Geometry):
        self.path, self.geometry = path, geometry
        self.n, self.problem = self._inspect()

    def _inspect(self) -> tuple[int, str | None]:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                if "images" not in f:
                    return 1, f"no `images` dataset (has: {', '.join(sorted(f)) or 'nothing'}); not a Galaxy10-format file"
                ds = f["images"]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
                    return 1, f"`images` is {getattr(ds, 'dtype', '?')} {getattr(ds, 'shape', '?')}; expected uint8 (N, H, W, 3)"
                return ds.shape[0], None
        except OSError as exc:
            return 1, one_line(f"not a readable HDF5 file ({exc})")

    def __len__(self) -> int:
        return self.n

    def _columns(self, f) -> dict:
        cols = {}
        for key, names in (("id", ("id", "objid")), ("ra", ("ra",)), ("dec", ("dec",))):
            name = next((n for n in names if n in f and getattr(f[n], "shape", None) == (self.n,)), None)
            if name is not None:
                cols[key] = f[name]
        return cols

    def __iter__(self) -> Iterator[Entry]:
        return self.entries()

    def entries(self, first: int = 0) -> Iterator[Entry]:
        import h5py

        if self.problem:
            if first == 0:
                yield Entry(str(self.path), error=self.problem)
            return
        with h5py.File(self.path, "r") as f:
            images, columns = f["images"], self._columns(f)
            for start in range(first, self.n, H5_CHUNK):
                stop = min(start + H5_CHUNK, self.n)
                block = images[start:stop]
                values = {k: ds[start:stop] for k, ds in columns.items()}
                for i in range(stop - start):
                    meta = {k: _plain(v[i]) for k, v in values.items()}
                    yield Entry(f"{self.path}[{start + i}]", array_to_side(block[i], self.geometry), meta=meta)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value.item() if hasattr(value, "item") else value


def discover(paths, geometry: Geometry, *, fits_reader=None, catalogue=None) -> list:
    """The sources of the INPUT paths, in the order given. `catalogue(path)` makes the source
    of a CSV catalogue. GalmorphError for a missing path, a file type galmorph does not read,
    or a folder without images."""
    sources = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise GalmorphError(f"input {text} does not exist; give image, FITS, .h5 or .csv files or folders of images")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and suffix(p) in IMAGE_SUFFIXES + FITS_SUFFIXES)
            if not files:
                raise GalmorphError(f"folder {text} holds no JPEG, PNG or FITS file (searched recursively)")
            sources.append(FileSource(files, geometry, fits_reader))
            continue
        kind = suffix(path)
        if kind in IMAGE_SUFFIXES + FITS_SUFFIXES:
            sources.append(FileSource([path], geometry, fits_reader))
        elif kind in H5_SUFFIXES:
            sources.append(H5Source(path, geometry))
        elif kind in CSV_SUFFIXES:
            sources.append(catalogue(path))
        else:
            raise GalmorphError(f"input {text}: galmorph predict reads {', '.join(IMAGE_SUFFIXES + FITS_SUFFIXES)}, "
                                f"{', '.join(H5_SUFFIXES)} and .csv catalogues, not {kind or 'files without a suffix'}")
    return sources
