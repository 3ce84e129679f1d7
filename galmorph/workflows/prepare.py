"""Data preparation shared by every workflow: the dataset loaded once, its scheme and subset
applied, the split made (or reused), and the batch maker over the uint8 images.

Training, explaining, multi-seed groups, hierarchies and Optuna studies all start here, so
that the same settings give the same images, split and batches in every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from galmorph.config import TrainConfig
from galmorph.core import training
from galmorph.core.errors import GalmorphError
from galmorph.data import augment, registry, resize, splits, stream

SYNTHETIC_DATA_SEED = 0  # the synthetic images stay the same whatever the training seed
SUBSET_SEED = 0  # likewise the max_images subset: seeds vary the split and the weights only


@dataclass
class Prepared:
    """Data ready to train on: loaded once, reused by every trial of a study."""

    data: registry.Dataset
    split: splits.Split
    maker: augment.BatchMaker


def check_data_settings(config: TrainConfig) -> None:
    """The settings that depend on the dataset, checked against its record before any data is
    read: `band` among its bands (never SDSS's channel order on Legacy Surveys images), and
    `image_size` no larger than its images. Files given by path are checked on load."""
    bandmap = registry.band_map(config.dataset)
    if config.band not in bandmap.choices:
        raise GalmorphError(f"invalid choice: {config.band!r} for band with dataset {config.dataset} "
                            f"({bandmap.survey} images); choose one of {', '.join(bandmap.choices)}")
    record = registry.DATASETS.get(config.dataset)
    if record is not None and config.dataset != "synthetic":  # synthetic images are as large as asked for
        resize.check_size(record.image_shape[0], config.image_size, config.dataset)


def with_stream_decided(config: TrainConfig) -> TrainConfig:
    """`config` with `--stream auto` decided here, once. Processes that train one model together
    (data-parallel replicas) must read the data alike: each deciding on the memory free as it
    loads could stream in one replica and not in another, and so visit other images."""
    if config.stream != "auto":
        return config
    path, _ = registry.resolve_path(config.dataset, synthetic_n=config.synthetic_n,
                                    synthetic_noise=config.synthetic_noise, seed=SYNTHETIC_DATA_SEED)
    streamed, _ = stream.decide("auto", path, config.image_size)
    return config.replace(stream="true" if streamed else "false")


def prepare(config: TrainConfig, *, merge_val_into_train: bool = False) -> Prepared:
    """Load the dataset, apply scheme and max_images, make (or reuse) the split.

    merge_val_into_train: train on train+validation (the final retrain after a study,
    galmorph.workflows.tune.retrain); the test split is unchanged, and the validation images stay as
    the split's `val`, so the run's val_* metrics are then measured on trained-on images.
    """
    check_data_settings(config)
    data = registry.load(
        config.dataset, config.scheme, schemes_file=config.schemes_file or None, image_size=config.image_size,
        stream_images=config.stream,
        synthetic_n=config.synthetic_n, synthetic_noise=config.synthetic_noise, seed=SYNTHETIC_DATA_SEED,
    )
    if config.max_images:
        data = data.subset(splits.stratified_subset(data.labels, config.max_images, seed=SUBSET_SEED))
    if config.split_file:
        split = splits.load(Path(config.split_file), data.rows, dataset_digest=data.digest(), groups=data.groups)
    else:
        split = splits.stratified(data.labels, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                                  seed=config.seed, groups=data.groups, class_names=data.class_names)
    if merge_val_into_train:
        import dataclasses

        split = dataclasses.replace(split, train=np.sort(np.concatenate([split.train, split.val])))
    maker = augment.BatchMaker(data.images, data.bands.channels(config.band), config.crop_fraction)
    return Prepared(data, split, maker)


def hyper_from(config: TrainConfig, train_labels: np.ndarray | None = None, n_classes: int = 0) -> training.Hyper:
    """The backend's view of `config`: every Hyper field is the setting of the same name, and
    `class_weight` is computed from the training labels unless class_weights is `none`."""
    cw = None
    if config.class_weights != "none":
        if train_labels is None:
            raise ValueError(f"class_weights={config.class_weights} needs the training labels")
        cw = training.class_weight(train_labels, n_classes, training.CLASS_WEIGHT_POWER[config.class_weights])
    same = {f.name: getattr(config, f.name) for f in fields(training.Hyper) if f.name != "class_weight"}
    return training.Hyper(class_weight=cw, **same)


def train_stream(config: TrainConfig, prepared: Prepared) -> augment.TrainStream:
    """The training batches of a run (the global batch when data-parallel)."""
    return augment.TrainStream(prepared.maker, prepared.split.train, prepared.data.labels, mode=config.augment,
                               batch_size=config.batch_size, seed=config.seed)
