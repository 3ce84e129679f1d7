"""One record per dataset, and the one loader that turns any of them into a `Dataset`.

A dataset is named (`galaxy10`, `galaxy10_decals`, `synthetic`, `nair2010`) or given as
the path of a Galaxy10-format HDF5 file. `load()` returns uint8 images untouched, or
area-averaged to `image_size` (band selection and augmentation happen per batch, so memory
never grows with either), labels mapped through a class scheme, each kept image's row in
the source file, and the file's per-image columns (ra, dec, ...). Each record says which
band each colour channel holds (galmorph.data.bands), so `--band` means the same band on
SDSS and on Legacy Surveys images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.core.paths import cache_dir
from galmorph.data import bands, hdf5, integrity, schemes, stream, synthetic
from galmorph.data import download as dl
from galmorph.data.nair2010.params import manifest_path
from galmorph.data.synthetic.instrument import pixel_scale as synthetic_pixel_scale

GALAXY10_CLASSES = (
    "Disk, Face-on, No Spiral",
    "Smooth, Completely round",
    "Smooth, in-between round",
    "Smooth, Cigar shaped",
    "Disk, Edge-on, Rounded Bulge",
    "Disk, Edge-on, Boxy Bulge",
    "Disk, Edge-on, No Bulge",
    "Disk, Face-on, Tight Spiral",
    "Disk, Face-on, Medium Spiral",
    "Disk, Face-on, Loose Spiral",
)

GALAXY10_DECALS_CLASSES = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    description: str
    source: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    size_bytes: int | None = None
    how_to_get: str = ""
    bands: bands.BandMap = bands.SDSS  # the band in each colour channel of the images
    astronn_file: str = ""  # astroNN's cached copy under ~/.astroNN/datasets, reused when it verifies
    pixel_scale: float | None = None  # arcsec/px of every image, where the dataset has one fixed scale


DATASETS: dict[str, DatasetRecord] = {
    "galaxy10": DatasetRecord(
        name="galaxy10",
        description="Galaxy10 SDSS: 21,785 Galaxy Zoo galaxies, 10 classes, 69x69 gri colour (Leung & Bovy, astroNN)",
        source="https://zenodo.org/records/10844811",
        image_shape=(69, 69, 3),
        class_names=GALAXY10_CLASSES,
        filename="Galaxy10.h5",
        urls=(
            "https://zenodo.org/records/10844811/files/Galaxy10.h5?download=1",
            "https://www.astro.utoronto.ca/~bovy/Galaxy10/Galaxy10.h5",
        ),
        sha256="969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af",
        size_bytes=210_234_548,
        how_to_get="run `galmorph data download galaxy10` (210 MB)",
        astronn_file="Galaxy10.h5",
    ),
    "galaxy10_decals": DatasetRecord(
        name="galaxy10_decals",
        description="Galaxy10 DECaLS: 17,736 Galaxy Zoo galaxies, 10 classes, 256x256 grz colour from the DESI "
                    "Legacy Imaging Surveys (Leung & Bovy, astroNN); columns ra, dec, redshift, pxscale",
        source="https://zenodo.org/records/10845026",
        image_shape=(256, 256, 3),
        class_names=GALAXY10_DECALS_CLASSES,
        filename="Galaxy10_DECals.h5",
        # Zenodo only: the dataset page's older University of Toronto link is not in REFERENCE.md
        # (galaxy10 keeps its fallback because that one is). The size is not published to the byte
        # ("2.54 GB"), so only the SHA256 (from the dataset page, henrysky/Galaxy10) is checked.
        urls=("https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5?download=1",),
        sha256="19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571",
        how_to_get="run `galmorph data download galaxy10_decals` (2.54 GB)",
        bands=bands.LEGACY,
        astronn_file="Galaxy10_DECals.h5",
    ),
    "synthetic": DatasetRecord(
        name="synthetic",
        description="Offline simulated SDSS-like E/S0/Sp/Irr galaxies (Sersic bulges, inclined disks, spiral arms, PSF, noise)",
        source="galmorph.data.synthetic",
        pixel_scale=synthetic_pixel_scale(69),
        image_shape=(69, 69, 3),
        class_names=("E", "S0", "Sp", "Irr"),
        filename="(generated)",
        how_to_get="generated on first use and cached",
    ),
    "nair2010": DatasetRecord(
        name="nair2010",
        description="Nair & Abraham 2010 (14,034 SDSS galaxies, T-types), 110x110 SkyServer cutouts at 0.7\"/px",
        source="VizieR J/ApJS/186/427 + SDSS SkyServer ImgCutout",
        image_shape=(110, 110, 3),
        class_names=("E", "S0", "Sp", "Irr+Misc"),
        filename="nair2010/nair2010.h5",
        pixel_scale=0.7,
        how_to_get="run `galmorph data prepare nair2010` (about 14,000 cutout requests)",
    ),
}

ASTRONN_DIR = Path.home() / ".astroNN" / "datasets"
ASTRONN_GALAXY10 = ASTRONN_DIR / "Galaxy10.h5"
ASTRONN_GALAXY10_DECALS = ASTRONN_DIR / "Galaxy10_DECals.h5"


@dataclass
class Dataset:
    """Images and labels ready for splitting.

    images: uint8 (N, H, W, 3), colour composites whose channel order `bands` gives (SDSS:
    i, r, g; Legacy Surveys: z, r, g): an array, or when streamed a galmorph.data.stream.Images
    that reads them from the file as they are indexed;
    labels: int64 (N,) in 0..len(class_names)-1 after the class scheme;
    rows: int64 (N,), each image's row in the source file (stable across schemes);
    groups: (N,) galaxy ids (several images of one galaxy share one) or None;
    columns: the file's per-image values (ra, dec, redshift, pxscale where it has them), (N,) each;
    meta: `stream` (whether the images are streamed) and `stream_reason` (why).
    """

    name: str
    key: str  # the scheme namespace: dataset name, or the file's stem
    path: Path | None
    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    class_names: tuple[str, ...]
    native_class_names: tuple[str, ...]
    groups: np.ndarray | None = None
    scheme: str = "native"
    meta: dict = field(default_factory=dict)
    bands: bands.BandMap = bands.SDSS
    columns: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def digest(self) -> str:
        """Content digest (16 hex digits) of the images and labels actually used (the same whether
        they are in memory or streamed: streamed ones are hashed as they are read)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        h.update("|".join(self.class_names).encode())
        step = max(1, (32 << 20) // max(1, int(np.prod(self.images.shape[1:]))))  # 32 MB at a time
        for start in range(0, len(self), step):
            h.update(np.ascontiguousarray(self.images[start : start + step]).tobytes())
        return h.hexdigest()[:16]

    def subset(self, keep: np.ndarray) -> "Dataset":
        """A Dataset of the positions `keep` (copies the selected images; streamed ones stay in the file)."""
        return Dataset(
            self.name, self.key, self.path, _take(self.images, keep), self.labels[keep], self.rows[keep],
            self.class_names, self.native_class_names,
            None if self.groups is None else self.groups[keep], self.scheme, dict(self.meta), self.bands,
            {k: v[keep] for k, v in self.columns.items()},
        )


def _take(images, keep: np.ndarray):
    """images[keep] of an array, or the streamed images of those positions (nothing read)."""
    return images[keep] if isinstance(images, np.ndarray) else images.take(keep)


def names() -> list[str]:
    return sorted(DATASETS)


def resolve_path(dataset: str, *, download: bool = True, synthetic_n: int = 2000,
                 synthetic_size: int = 69, synthetic_noise: float = 1.0, seed: int = 0,
                 progress: bool = True) -> tuple[Path, DatasetRecord | None]:
    """The HDF5 file behind `dataset` (a registered name or a path), fetching or generating it."""
    if dataset in DATASETS:
        record = DATASETS[dataset]
        if dataset == "synthetic":

            path = synthetic.load_or_generate(synthetic_n, synthetic_size, seed=seed, noise=synthetic_noise)
            return Path(path), record
        if record.urls:
            return downloaded_path(record, download=download, progress=progress), record
        path = cache_dir() / record.filename
        if not path.is_file():
            raise GalmorphError(f"dataset {dataset} is not prepared yet ({path} is missing); {record.how_to_get}")
        _check_prepared(path, record)
        return path, record
    path = Path(dataset).expanduser()
    if path.suffix.lower() in (".h5", ".hdf5") or path.exists() or "/" in dataset:
        if not path.is_file():
            raise GalmorphError(f"dataset file {path} does not exist; give the path of a Galaxy10-format .h5 file")
        return path, None
    raise GalmorphError(
        f"unknown dataset {dataset!r}; choose one of {', '.join(names())} or give the path of a Galaxy10-format .h5 file"
    )


def _check_prepared(path: Path, record: DatasetRecord) -> None:
    """A prepared dataset must match the SHA256 its manifest recorded (hashed once per file version)."""
    manifest = manifest_path(path)
    try:
        doc = json.loads(manifest.read_text())
        sha256, size = str(doc["sha256"]), doc.get("size_bytes")
    except (OSError, ValueError, KeyError, TypeError):
        raise GalmorphError(
            f"{path} cannot be verified: its manifest {manifest.name} is missing or unreadable, so the file is not "
            f"used; rebuild both with `galmorph data prepare {record.name}` (it reuses the cached catalogue and cutouts)"
        ) from None
    problem = integrity.check(path, sha256, size)
    if problem is not None:
        raise GalmorphError(
            f"{path} does not match its manifest ({problem}), so it is damaged and not used; rebuild it with "
            f"`galmorph data prepare {record.name}` (it reuses the cached catalogue and cutouts)"
        )


def galaxy10_path(download: bool = True, progress: bool = True) -> Path:
    """Galaxy10.h5 (see `downloaded_path`)."""
    return downloaded_path(DATASETS["galaxy10"], download=download, progress=progress)


def astronn_copy(record: DatasetRecord) -> Path | None:
    """Where astroNN caches `record`'s file (looked up at call time, so tests can move it)."""
    if not record.astronn_file:
        return None
    named = {"Galaxy10.h5": ASTRONN_GALAXY10, "Galaxy10_DECals.h5": ASTRONN_GALAXY10_DECALS}
    return named.get(record.astronn_file, ASTRONN_DIR / record.astronn_file)


def downloaded_path(record: DatasetRecord, download: bool = True, progress: bool = True) -> Path:
    """A downloadable dataset's file: astroNN's cached copy if it verifies, else galmorph's
    cache, downloading if needed. A copy that fails its SHA256 is never used: galmorph's own
    is downloaded again. Each copy is hashed once per file version (galmorph.data.integrity);
    the stamp of astroNN's copy is kept in galmorph's cache, not in astroNN's folder."""

    theirs = astronn_copy(record)
    astronn_sidecar = cache_dir() / ("astronn-" + record.filename + integrity.SUFFIX)
    if theirs is not None and theirs.is_file() and integrity.check(theirs, record.sha256, record.size_bytes,
                                                                 sidecar=astronn_sidecar) is None:
        return theirs
    dest = cache_dir() / record.filename
    problem = integrity.check(dest, record.sha256, record.size_bytes) if dest.is_file() else None
    if dest.is_file() and problem is None:
        return dest
    if not download:
        if problem is not None:
            raise GalmorphError(f"the downloaded {dest} is damaged ({problem}) and is not used; "
                                f"download it again: {record.how_to_get}")
        raise GalmorphError(f"{record.name} is not downloaded yet; {record.how_to_get}")
    path = dl.fetch(record.urls, dest, record.sha256, size=record.size_bytes, progress=progress)
    integrity.remember(path, record.sha256)  # fetch verified it in full
    return path


def band_map(dataset: str) -> bands.BandMap:
    """The bands of `dataset`'s colour channels: its record's, SDSS for a Galaxy10-format file."""
    return DATASETS[dataset].bands if dataset in DATASETS else bands.SDSS


def pixel_scale(data: Dataset) -> float | None:
    """arcsec/px of `data`'s images as loaded (the record's fixed scale, times native / loaded
    side after an --image-size); None where the dataset has no fixed scale or no record."""
    record = DATASETS.get(data.name)
    if record is None or record.pixel_scale is None:
        return None
    return record.pixel_scale * record.image_shape[0] / data.image_size


def load(dataset: str, scheme: str = "default", *, schemes_file: str | None = None, image_size: int = 0,
         stream_images: str = "false", **resolve_kwargs) -> Dataset:
    """Load `dataset` and apply class scheme `scheme` (dropping the classes it leaves out);
    `image_size` > 0 area-averages the images to that side as they are read. `stream_images`
    (auto, true or false: galmorph.data.stream.decide) leaves the images in the file, read as
    they are needed."""

    path, record = resolve_path(dataset, **resolve_kwargs)
    streamed, reason = stream.decide(stream_images, path, image_size)
    raw = hdf5.read(path, image_size=image_size, images=not streamed)
    if streamed:
        raw.images = stream.Images(stream.Rows(path, image_size))
        if raw.images.source.problem:
            stream.warn(raw.images.source.problem)
    native_labels = raw.labels  # 0..len(native)-1
    label_values = None  # the file's label of each native class, where they are not 0..K-1 by declaration
    if record is not None:
        key = record.name
        native = record.class_names
        if raw.class_names is not None and len(raw.class_names) != len(native):
            raise GalmorphError(
                f"{path} has {len(raw.class_names)} classes but dataset {key} has {len(native)}; {hdf5.remedy(path)}"
            )
    elif raw.class_names is not None:
        key, native = path.stem, raw.class_names
    else:  # no class_names: the classes are the distinct labels present, class_<label> in label order
        key = path.stem
        label_values, native_labels = hdf5.infer_classes(raw.labels, path)
        native = tuple(f"class_{v}" for v in label_values.tolist())
    if native_labels.max() >= len(native):
        bad = np.unique(native_labels[native_labels >= len(native)])
        raise GalmorphError(
            f"{path}: label(s) {', '.join(map(str, bad[:5].tolist()))} are outside the {len(native)} classes "
            f"(0..{len(native) - 1}) of {key}; fix the labels"
        )
    sch = schemes.get(key, scheme, native, schemes_file=schemes_file, label_values=label_values)
    keep, labels = sch.apply(native_labels)
    if not keep.any():
        raise GalmorphError(f"scheme {sch.name} keeps no image of {key}; choose another scheme")
    rows = np.flatnonzero(keep).astype(np.int64)
    images = raw.images if keep.all() else _take(raw.images, keep)
    groups = None if raw.ids is None else raw.ids[keep]
    return Dataset(
        name=record.name if record else str(path), key=key, path=path, images=images, labels=labels,
        rows=rows, class_names=sch.class_names, native_class_names=tuple(native), groups=groups,
        scheme=sch.name, bands=record.bands if record else bands.SDSS,
        meta={"stream": streamed, "stream_reason": reason},
        columns={k: (v if keep.all() else v[keep]) for k, v in raw.columns.items()},
    )


def describe(dataset: str | None, scheme: str = "default", *, schemes_file: str | None = None) -> str:
    """What `galmorph data info` prints: without a dataset, every registered one (description,
    classes, how to get it); with one, its size, bands, extra columns, images per class under
    `scheme`, and the schemes it has."""
    if dataset is None:
        return "\n".join(f"{name:15s} {DATASETS[name].description}\n{'':15s} classes: "
                         f"{', '.join(DATASETS[name].class_names)}; {DATASETS[name].how_to_get}" for name in names())
    data = load(dataset, scheme, schemes_file=schemes_file, stream_images="auto")
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    lines = [f"{data.name}: {len(data)} images {data.images.shape[1:]} uint8, scheme {data.scheme}, digest {data.digest()}",
             f"bands: {data.bands.survey}, channels {', '.join(data.bands.rgb)}; --band {', '.join(data.bands.choices)}"]
    if data.columns:
        lines.append(f"columns: {', '.join(data.columns)}")
    lines += [f"  {name:28s} {n:6d}" for name, n in zip(data.class_names, counts)]
    lines.append(f"schemes: {', '.join(schemes.names(data.key, schemes_file))}")
    return "\n".join(lines)
