"""Training images read from a Galaxy10-format file as they are needed (`--stream`).

`Rows` reads the file's `images` a block of rows at a time (a block is the file's HDF5 chunk
along the image axis where that chunking is sound), area-averages each block to the loaded
side as `hdf5.read` does (galmorph.data.resize), checks it as `hdf5.read` checks a whole file,
and keeps the blocks last used in a small cache: memory is bounded by the cache, whatever the
file's size (the file's pages are dropped from the page cache as they are read). `Images` is the array-like that a `Dataset` holds instead of a uint8 array: the
file rows of its positions over one shared `Rows`; indexing it reads pixels, `take` selects
positions without reading any.

The order of a streamed epoch (augment.windowed_plan) shuffles the blocks, then the images
within each window of `window` consecutive blocks of that order (WINDOW_BYTES of images, at
least MIN_WINDOW_BLOCKS blocks); the cache holds a window and two blocks, so each block is read
once per pass. A window that covers the whole file gives exactly the
in-memory plan.

`decide` resolves `--stream auto`: stream when the decoded images would take more than
AUTO_FRACTION of the memory available to this process (the smaller of MemAvailable and what
its cgroup still allows).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from galmorph.core.errors import GalmorphError
from galmorph.data import hdf5, resize

CHOICES = ("auto", "true", "false")
AUTO_FRACTION = 0.25  # --stream auto streams files whose decoded images exceed this share of available memory
WINDOW_BYTES = 128 << 20  # decoded images shuffled together within an epoch: the cache holds a window
MIN_WINDOW_BLOCKS = 8  # ... of at least this many blocks, so that large images still mix across the file
BLOCK_ROWS = hdf5.CHUNK_ROWS  # rows read at once where the file's chunks are no good unit (contiguous, 1 row, whole set)
WHOLE_SET_ROWS = 1024  # a single chunk of more rows than this is "the whole set in one chunk"


def convert_hint(path) -> str:
    return f"`galmorph data convert {path} --output NEW.h5` writes it with chunks of {BLOCK_ROWS} rows"


class Rows:
    """The rows of a Galaxy10-format file's `images`, read and downsampled a block at a time.

    Thread-safe (batch-making threads share it). `read(rows)` returns uint8 (len(rows), S, S, 3)
    for sorted file rows; a block that cannot be read is a one-line GalmorphError naming the
    file and the rows.
    """

    def __init__(self, path: Path, image_size: int = 0):
        import h5py

        self.path = Path(path)
        with h5py.File(self.path, "r") as fh:
            chunks, native = fh["images"].chunks, int(fh["images"].shape[1])
        self.native, self.size = native, int(image_size or native)
        resize.check_size(native, self.size, self.path)  # before anything is held open
        # blocks that are whole chunks are cached here, decoded: HDF5's own chunk cache would
        # only hold a second copy (1 MB by default, the rest of its unaligned chunks)
        aligned = bool(chunks) and 1 < chunks[0] <= WHOLE_SET_ROWS
        self._fh = h5py.File(self.path, "r", **({"rdcc_nbytes": 0} if aligned else {}))
        self._fd = os.open(self.path, os.O_RDONLY)  # to drop the file's pages from the page cache
        # closed by close(), or when the Rows is collected (a Dataset is dropped without closing it)
        self._release = weakref.finalize(self, _release, self._fh, self._fd)
        self._ds = self._fh["images"]
        self.n = int(self._ds.shape[0])
        self.problem = chunking_problem(self.path, self._ds.shape, chunks)
        self.block = int(chunks[0]) if aligned else BLOCK_ROWS
        self.block = min(self.block, self.n)
        block_bytes = self.block * self.size * self.size * self._ds.shape[3]
        self.window = max(MIN_WINDOW_BLOCKS, WINDOW_BYTES // block_bytes)
        # a window and the first blocks of the next (batches made ahead cross into it); a block
        # evicted while a batch made late still needs it is read again, never wrong
        self.capacity = self.window + 2
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def n_blocks(self) -> int:
        return -(-self.n // self.block)

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.size, self.size, self._ds.shape[3]), np.uint8)
        blocks = rows // self.block
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        for part in np.split(np.arange(rows.size), cuts):
            if part.size:
                b = int(blocks[part[0]])
                out[part] = self._get(b)[rows[part] - b * self.block]
        return out

    def _get(self, b: int) -> np.ndarray:
        with self._lock:
            got = self._cache.get(b)
            if got is not None:
                self._cache.move_to_end(b)
                return got
            got = self._load(b)
            self._cache[b] = got
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            return got

    def _load(self, b: int) -> np.ndarray:
        start, stop = b * self.block, min(self.n, (b + 1) * self.block)
        try:
            raw = np.asarray(self._ds[start:stop])
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise GalmorphError(
                f"{self.path}: rows {start}-{stop - 1} of `images` cannot be read ({hdf5.first_line(exc)}): "
                f"the file is damaged there; {hdf5.remedy(self.path)}; once it is fixed, `galmorph train --resume "
                "RUN_ID` continues a run that failed here after its first epoch") from None
        # A streamed file is read once per pass and does not fit in memory: its pages in the
        # page cache would only push out other memory (and count against a cgroup's limit).
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        images = resize.downsample(raw, self.size)
        hdf5.check_images(images, self.path, first=start)
        return images

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._release()


def _release(fh, fd: int) -> None:
    fh.close()
    os.close(fd)


class Images:
    """Array-like uint8 (N, S, S, 3): position i is file row `rows[i]` of `source`, read on indexing."""

    streamed = True
    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, source: Rows, rows: np.ndarray | None = None):
        self.source = source
        self.rows = np.arange(source.n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.rows.size), self.source.size, self.source.size, int(self.source._ds.shape[3]))

    def __len__(self) -> int:
        return int(self.rows.size)

    def take(self, index, axis: int = 0) -> Images:
        """The positions `index` (integers or a boolean mask), nothing read."""
        if axis != 0:
            raise ValueError("Images.take selects images (axis 0) only")
        index = np.asarray(index)
        return Images(self.source, self.rows[np.flatnonzero(index) if index.dtype == bool else index])

    def __getitem__(self, index) -> np.ndarray:
        """The pixels of positions `index` (a slice, an integer or integer array), as uint8."""
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return self.source.read(np.asarray([rows]))[0]
        unique, inverse = np.unique(rows, return_inverse=True)
        got = self.source.read(unique)
        return got if unique.size == rows.size and np.array_equal(unique, rows) else got[inverse.reshape(rows.shape)]

    def blocks(self, positions: np.ndarray) -> np.ndarray:
        """The block (unit of reading) of each of `positions`."""
        return self.rows[np.asarray(positions, dtype=np.intp)] // self.source.block

    @property
    def window(self) -> int:
        return self.source.window


def chunking_problem(path, shape, chunks) -> str | None:
    """Why `images` chunked as `chunks` reads slowly a block at a time (one row per chunk, or the
    whole set in one chunk), with the command that rewrites it; None where it is fine."""
    n = shape[0]
    if chunks is None or n <= 1:
        return None
    if chunks[0] == 1:
        what = "one image per HDF5 chunk"
    elif chunks[0] >= n and n > WHOLE_SET_ROWS:
        what = f"all {n} images in one HDF5 chunk"
    else:
        return None
    return f"{path} stores {what}, so streaming it reads slowly; {convert_hint(path)}"


def available_memory() -> int:
    """Bytes this process may still take: MemAvailable, or less where its cgroup (v1 or v2) is
    limited to less."""
    import psutil

    free = int(psutil.virtual_memory().available)
    for limit, usage in _cgroup_files():
        try:
            cap, used = int(Path(limit).read_text().strip()), int(Path(usage).read_text().strip())
        except (OSError, ValueError):  # "max" (no limit), or no such controller
            continue
        free = min(free, max(0, cap - used))
    return free


def _cgroup_files() -> list[tuple[str, str]]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2
            out.append((f"/sys/fs/cgroup{rel}/memory.max", f"/sys/fs/cgroup{rel}/memory.current"))
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{rel}"
            out.append((f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"))
    return out


def decide(setting: str, path: Path, image_size: int = 0) -> tuple[bool, str]:
    """(stream or not, why) for `--stream setting` on the file at `path` loaded at `image_size`."""
    import h5py

    if setting not in CHOICES:
        raise GalmorphError(f"stream must be one of {', '.join(CHOICES)}, got {setting!r}")
    if setting != "auto":
        return setting == "true", f"--stream {setting}"
    try:
        with h5py.File(path, "r") as fh:
            shape = fh["images"].shape
    except (OSError, KeyError):
        return False, "the file's size is unknown: read in full (hdf5.read names the problem)"
    side = image_size or shape[1]
    decoded = int(shape[0]) * side * side * int(shape[-1])
    free = available_memory()
    streamed = decoded > AUTO_FRACTION * free
    return streamed, (f"--stream auto: {decoded / 2**20:.0f} MB decoded {'>' if streamed else '<='} "
                      f"{AUTO_FRACTION:.0%} of {free / 2**20:.0f} MB available")


def warn(text: str) -> None:
    print(f"galmorph: warning: {text}", file=sys.stderr)
