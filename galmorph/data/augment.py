"""Augmented float32 batches produced on the fly from uint8 images.

The paper's 40 views of a cutout: 5 crops (centre + 4 corners) x 4 rotations by 90 degrees
x 2 (mirrored or not). The crop keeps `crop_fraction` of the side (100 of 110 pixels, as the
PHYS449 reproduction rebuilt the paper's crops, not a figure quoted from the paper; 0.909 of
69 is 63). View 0 is the plain centre crop, the evaluation view.

Every view is a fixed permutation of pixel positions, so a batch is ONE gather from the
uint8 array (images never get copied per view and memory does not grow with the number
of views), followed by the one normalisation `normalise` (x / 255, float32). Batches are
NHWC float32 with the selected bands as channels.

Modes: `paper40` (every training image in all 40 views per epoch), `random` (each image
once per epoch in one random view of the 40), `none` (centre crop only), `dihedral` (each
image once per epoch in one of the 8 rotations by 90 degrees and mirrors of the centre crop:
galaxies have no up or down) and `rotate` (each image once per epoch turned by any angle,
mirrored or not and scaled by 0.9-1.1, then centre-cropped; nearest-neighbour sampling, so
still one gather, with a map made per batch). Every epoch's plan is a pure function of
(seed, epoch), so a resumed run sees the same batches. Images streamed from their file
(galmorph.data.stream) are gathered the same way from the batch's rows once read, in the
order of `windowed_plan`.

Test-time augmentation (`tta_views`): the mean over the 40 views (`true`) or over the 8
dihedral views of the centre crop (`dihedral`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from galmorph.core.errors import GalmorphError

MODES = ("paper40", "random", "none", "dihedral", "rotate")
PAPER_CROP_FRACTION = 100 / 110  # PHYS449's 100 px crops of 110 px cutouts (module docstring)
N_CROPS, N_ROTATIONS, N_MIRRORS = 5, 4, 2
N_VIEWS = N_CROPS * N_ROTATIONS * N_MIRRORS
N_DIHEDRAL = N_ROTATIONS * N_MIRRORS  # views 0..7: the centre crop's rotations and mirrors
ROTATE_SCALE = (0.9, 1.1)  # `rotate`: the range of the random zoom
TTA = ("false", "true", "dihedral")  # test-time augmentation: none, the 40 views, the 8 dihedral views
_TTA_ALIASES = {"false": "false", "none": "false", "no": "false", "off": "false", "0": "false",
                "true": "true", "paper40": "true", "yes": "true", "on": "true", "1": "true", "dihedral": "dihedral"}


def tta_name(value) -> str:
    """The TTA setting `value` (a bool, or a string such as true, false, paper40, dihedral) as
    one of TTA; an unknown string is returned as it is, for the caller's check to name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _TTA_ALIASES.get(str(value).strip().lower(), str(value))


def tta_views(value) -> range:
    """The views a prediction averages for TTA setting `value`: the centre crop alone, the 40
    views or the 8 dihedral views of the centre crop."""
    name = tta_name(value)
    if name not in TTA:
        raise GalmorphError(f"unknown tta {value!r}; choose one of {', '.join(TTA)} (true: the 40 views)")
    return {"false": range(1), "true": range(N_VIEWS), "dihedral": range(N_DIHEDRAL)}[name]


def normalise(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]. The one normalisation used for training and inference."""
    return np.multiply(x, np.float32(1 / 255), dtype=np.float32)


def crop_size(image_size: int, crop_fraction: float = PAPER_CROP_FRACTION) -> int:
    if not 0.0 < crop_fraction <= 1.0:
        raise GalmorphError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return max(1, int(round(image_size * crop_fraction)))


def view_maps(image_size: int, crop: int) -> np.ndarray:
    """int32 (40, crop*crop): for each view, the flat source pixel of each output pixel.

    View v = crop_index * 8 + rotation * 2 + mirror, crop_index 0 = centre, 1..4 = the
    corners (top-left, top-right, bottom-left, bottom-right).
    """
    if crop > image_size:
        raise GalmorphError(f"crop {crop} is larger than the {image_size}px images")
    off = image_size - crop
    c = off // 2
    origins = [(c, c), (0, 0), (0, off), (off, 0), (off, off)]
    grid = np.arange(image_size * image_size, dtype=np.int32).reshape(image_size, image_size)
    maps = np.empty((N_VIEWS, crop * crop), dtype=np.int32)
    for ci, (y, x) in enumerate(origins):
        window = grid[y : y + crop, x : x + crop]
        for rot in range(N_ROTATIONS):
            rotated = np.rot90(window, k=rot)
            for mirror in range(N_MIRRORS):
                view = rotated[:, ::-1] if mirror else rotated
                maps[ci * 8 + rot * 2 + mirror] = view.ravel()
    return maps


class BatchMaker:
    """Makes normalised NHWC float32 batches of chosen (image, view) pairs.

    images: uint8 (N, H, H, 3) (not copied), or streamed galmorph.data.stream.Images (each
    batch's rows are read, then gathered as in memory); channels: band channel indices
    (galmorph.data.bands).
    """

    def __init__(self, images: np.ndarray, channels, crop_fraction: float = PAPER_CROP_FRACTION):
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise GalmorphError(f"images must be (N, H, H, C), got {images.shape}")
        self.images = images
        self.size = images.shape[1]
        self.crop = crop_size(self.size, crop_fraction)
        self.channels = np.asarray(channels, dtype=np.intp)
        self.maps = view_maps(self.size, self.crop)
        self.streamed = bool(getattr(images, "streamed", False))
        self._flat = None if self.streamed else images.reshape(images.shape[0], self.size * self.size, images.shape[3])
        self._single = self.channels.size == 1
        self._chan = int(self.channels[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.crop, self.crop, int(self.channels.size))

    def _pixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat uint8 (M, H*H, C) images, the row of each of `index` in them): the whole array
        in memory, or the batch's own rows read from a streamed file."""
        if self._flat is not None:
            return self._flat, index
        rows = self.images[index]
        return rows.reshape(index.size, self.size * self.size, rows.shape[-1]), np.arange(index.size)

    def batch_uint8(self, index: np.ndarray, views: np.ndarray | int = 0) -> np.ndarray:
        """uint8 (B, crop, crop, C) of images `index` seen in `views` (one view or one per image)."""
        index = np.asarray(index, dtype=np.intp)
        pix = self.maps[views] if np.ndim(views) else self.maps[int(views)][None, :]
        flat, index = self._pixels(index)
        if self._single:
            # gather only the one band: a third of the memory traffic
            out = flat[index[:, None], pix, self._chan]
            return out.reshape(index.size, self.crop, self.crop, 1)
        out = flat[index[:, None], pix][..., self.channels]
        return out.reshape(index.size, self.crop, self.crop, self.channels.size)

    def batch(self, index: np.ndarray, views: np.ndarray | int = 0) -> np.ndarray:
        """Normalised images `index` in `views`: view numbers, or (for `rotate`) a float (B, 3)
        array of angle (radians), scale and mirror (0/1) per image."""
        if np.ndim(views) == 2:
            return normalise(self.batch_turned(index, views))
        return normalise(self.batch_uint8(index, views))

    def batch_turned(self, index: np.ndarray, turns: np.ndarray) -> np.ndarray:
        """uint8 (B, crop, crop, C): image b turned by turns[b, 0] radians about its centre,
        zoomed by turns[b, 1], mirrored where turns[b, 2] is 1, then centre-cropped; nearest
        neighbour, pixels beyond the edge repeat the edge."""
        index = np.asarray(index, dtype=np.intp)
        half = (self.crop - 1) / 2
        centre = (self.size - 1) / 2
        v, u = np.mgrid[0:self.crop, 0:self.crop].reshape(2, 1, -1) - half  # rows, columns from the centre
        angle, scale, mirror = (turns[:, k, None] for k in range(3))
        u = np.where(mirror > 0.5, -u, u)
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        x = np.clip(np.rint(centre + cos * u - sin * v), 0, self.size - 1).astype(np.intp)
        y = np.clip(np.rint(centre + sin * u + cos * v), 0, self.size - 1).astype(np.intp)
        pix = y * self.size + x
        flat, index = self._pixels(index)
        out = flat[index[:, None], pix][..., self.channels]
        return out.reshape(index.size, self.crop, self.crop, self.channels.size)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise GalmorphError(f"unknown augment mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def epoch_plan(n: int, mode: str, epoch: int, seed: int, part: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(positions, views) visited in one training epoch, shuffled reproducibly per epoch
    (`part` > 0: the plan of window `part` of a streamed epoch, windowed_plan)."""
    check_mode(mode)
    rng = np.random.default_rng([seed, epoch, 11, *([part] if part else [])])
    if mode == "paper40":
        pos = np.repeat(np.arange(n), N_VIEWS)
        views = np.tile(np.arange(N_VIEWS), n)
        order = rng.permutation(pos.size)
        return pos[order], views[order]
    pos = rng.permutation(n)
    if mode == "rotate":  # (angle, scale, mirror) per image: BatchMaker.batch_turned
        lo, hi = ROTATE_SCALE
        return pos, np.stack([rng.uniform(0, 2 * np.pi, n), rng.uniform(lo, hi, n), rng.integers(0, 2, n)], axis=1)
    high = {"random": N_VIEWS, "dihedral": N_DIHEDRAL}.get(mode)
    views = rng.integers(0, high, size=n) if high else np.zeros(n, dtype=np.int64)
    return pos, views


def windowed_plan(blocks: np.ndarray, mode: str, epoch: int, seed: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """epoch_plan for images streamed from a file: `blocks` is the block (unit of reading) of
    each image. The blocks are shuffled, cut into windows of `window`
    blocks, and each window's images are planned by epoch_plan in turn, so the batches of a
    window read only its blocks. A pure function of (seed, epoch); with one window, exactly
    epoch_plan(blocks.size, mode, epoch, seed), the in-memory plan.
    """
    ids, block_index = np.unique(blocks, return_inverse=True)
    if ids.size <= window:
        return epoch_plan(blocks.size, mode, epoch, seed)
    place = np.empty(ids.size, np.int64)
    place[np.random.default_rng([seed, epoch, 13]).permutation(ids.size)] = np.arange(ids.size)
    win = place[block_index] // window
    order = np.argsort(win, kind="stable")  # each window's images in increasing position
    bounds = np.cumsum(np.bincount(win, minlength=-(-ids.size // window)))[:-1]
    parts = [(members, epoch_plan(members.size, mode, epoch, seed, part=w + 1))
             for w, members in enumerate(np.split(order, bounds))]
    return (np.concatenate([members[pos] for members, (pos, _) in parts]),
            np.concatenate([views for _, (_, views) in parts]))


class TrainStream:
    """Training batches for one split: per epoch, shuffled (image, view) pairs in batches.

    `indices` are positions into the images; labels are returned as int64.
    """

    def __init__(self, maker: BatchMaker, indices: np.ndarray, labels: np.ndarray, *, mode: str,
                 batch_size: int, seed: int, drop_remainder: bool = False):
        self.maker = maker
        self.indices = np.asarray(indices, dtype=np.intp)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mode = check_mode(mode)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.drop_remainder = drop_remainder

    @property
    def images_per_epoch(self) -> int:
        n = self.indices.size * (N_VIEWS if self.mode == "paper40" else 1)
        return n - n % self.batch_size if self.drop_remainder else n

    def __len__(self) -> int:
        n = self.images_per_epoch
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.maker.streamed:
            images = self.maker.images
            pos, views = windowed_plan(images.blocks(self.indices), self.mode, epoch, self.seed, images.window)
        else:
            pos, views = epoch_plan(self.indices.size, self.mode, epoch, self.seed)
        return self.indices[pos], views

    def get(self, plan, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx, views = plan
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.maker.batch(idx[sl], views[sl]), self.labels[idx[sl]]

    def epoch(self, epoch: int, prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        plan = self.plan(epoch)
        batches = (self.get(plan, i) for i in range(len(self)))
        return prefetched(batches, prefetch) if prefetch > 0 else batches


def eval_batches(maker: BatchMaker, indices: np.ndarray, batch_size: int, views=0):
    """Batches of `indices` in one fixed view (default: centre crop), in order."""
    indices = np.asarray(indices, dtype=np.intp)
    for start in range(0, indices.size, batch_size):
        yield maker.batch(indices[start : start + batch_size], views)


def view_mean(predict, maker: BatchMaker, indices: np.ndarray, batch_size: int, tta, each=None) -> np.ndarray:
    """The mean over the views of TTA setting `tta` (tta_views) of `predict(batches)`, the
    (N, K) output for one view's eval_batches; `each`, if given, maps each view's output first
    (e.g. a temperature)."""
    views = tta_views(tta)
    total = None
    for view in views:
        out = predict(eval_batches(maker, indices, batch_size, view))
        out = each(out) if each is not None else out
        total = out.astype(np.float64) if total is None else total + out
    return total / len(views)


_POLL_S = 0.1  # how often a waiting producer or consumer looks whether the other one is gone


def prefetched(iterable, depth: int = 2):
    """Run `iterable` in a background thread, `depth` items ahead (numpy gathers release the GIL).

    No wait is unbounded: the producer gives up once the consumer is gone (closed, or left
    unclosed by an interrupt whose traceback keeps this generator alive), and the consumer
    does not wait for a producer that died without a word.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            put(exc)
            return
        put(done)

    thread = threading.Thread(target=work, name="galmorph-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=_POLL_S)
            except queue.Empty:
                if thread.is_alive() or not q.empty():
                    continue
                raise RuntimeError("the batch-making thread ended without a batch or an error") from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)  # the item it is making; a put gives up within _POLL_S
