"""Keras fitting: model.fit on a tf.data pipeline of galmorph batches, with a callback that
calls the neutral per-epoch reporter (early stopping and pruning decided there).

Performance settings (galmorph.acceleration decides what `auto` means): a mixed_bfloat16 /
mixed_float16 dtype policy (fp16 with a LossScaleOptimizer), XLA (jit_compile), batches made
by tf.data worker threads ahead of the step, and a tf.distribute strategy: OneDeviceStrategy
on one GPU (its dataset prefetches to the GPU), MirroredStrategy over several.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np

from galmorph import acceleration, system, training

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_STRATEGIES: dict = {}


def setup(seed: int, threads: int = 0, devices: int = 1) -> dict:
    """Seed and threads; without GPUs and with devices > 1, split the CPU into that many
    logical devices (CPU replicas for testing MirroredStrategy)."""
    import tensorflow as tf

    threads = threads or system.cpu_count()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # already initialised in this process
            pass
    if devices > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError:  # already initialised: keep what is there
            pass
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    info = {"device": "GPU" if gpus else "CPU", "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}"}
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        info["device_name"] = details.get("device_name", gpus[0].name)
    else:
        info["device_name"] = system.cpu_name()
    return info


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _bf16_supported(gpus) -> bool:
    import tensorflow as tf

    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
    return bool(cc) and cc[0] >= 8  # Ampere and later


def settings(hyper: training.Hyper | None) -> acceleration.Settings:
    gpus = _gpus()
    return acceleration.resolve(hyper or training.Hyper(1, 1, 1e-3), on_gpu=bool(gpus),
                                bf16_supported=_bf16_supported(gpus))


def resolved(hyper: training.Hyper) -> dict:
    """The performance settings this backend applies for `hyper`, for logging (Keras
    convolutions are NHWC whatever channels_last says; pinned copies are tf.data's own)."""
    s = settings(hyper)
    return {**s.as_params(), "channels_last_resolved": True, "pin_memory_resolved": False}


def policy(precision: str) -> "keras.DTypePolicy":
    return keras.DTypePolicy(POLICIES[precision])


def strategy(devices: int):
    """The tf.distribute strategy to build and train under, or None for Keras's default (CPU).

    One GPU: OneDeviceStrategy, whose distributed dataset prefetches batches to the GPU.
    Several: MirroredStrategy over the first `devices` GPUs, or over `devices` logical CPUs
    (see setup) where there is no GPU. One strategy object per device count and process.
    """
    import tensorflow as tf

    gpus = _gpus()
    if devices <= 1 and not gpus:
        return None
    if devices not in _STRATEGIES:
        if gpus and len(gpus) < devices:
            from galmorph.errors import GalmorphError

            raise GalmorphError(f"devices={devices} but only {len(gpus)} GPUs are visible")
        if devices <= 1:
            _STRATEGIES[devices] = tf.distribute.OneDeviceStrategy("/gpu:0")
        else:
            kind = "GPU" if gpus else "CPU"
            names = [d.name for d in tf.config.list_logical_devices(kind)][:devices]
            _STRATEGIES[devices] = tf.distribute.MirroredStrategy(names)
    return _STRATEGIES[devices]


def replica() -> tuple[int, int]:
    """(rank, world size) of this process: Keras trains all devices from one process."""
    return 0, 1


def launch(argv: list[str], devices: int) -> dict | None:
    """Keras needs no launcher (MirroredStrategy runs in this process): always None."""
    return None


def finish(metrics: dict) -> None:
    """End of a run in this process (nothing to hand over in Keras)."""


def _optimizer(hyper: training.Hyper):
    wd = hyper.weight_decay or None  # Keras applies weight_decay decoupled, for every optimiser
    lr = hyper.learning_rate
    b1, b2 = training.ADAM_BETAS
    if hyper.optimizer in ("adam", "adamw"):
        return keras.optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=training.ADAM_EPSILON, weight_decay=wd)
    if hyper.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=training.SGD_MOMENTUM, weight_decay=wd)
    if hyper.optimizer == "adadelta":
        return keras.optimizers.Adadelta(lr, rho=training.ADADELTA_RHO, epsilon=training.ADAM_EPSILON, weight_decay=wd)
    raise ValueError(hyper.optimizer)


def dataset(stream, n_classes: int, epochs: int, s: acceleration.Settings):
    """Every training batch of `epochs` epochs as one tf.data pipeline of (x, one-hot y).

    Element k is batch k % len(stream) of epoch k // len(stream): exactly TrainStream.get of
    that epoch's plan, whatever the number of worker threads (deterministic map). Keras keeps
    one iterator across epochs when steps_per_epoch is given, so the plan follows the epoch.
    """
    import tensorflow as tf

    n = len(stream)
    eye = np.eye(n_classes, dtype=np.float32)
    plans: dict = {}

    def make(k):
        epoch, i = divmod(int(k), n)
        plan = plans.get(epoch)
        if plan is None:  # the same plan whichever worker computes it first
            plan = plans[epoch] = stream.plan(epoch)
            plans.pop(epoch - 2, None)
        x, y = stream.get(plan, i)
        return x, eye[y]

    shape = (None, *stream.maker.input_shape)

    def load(k):
        x, y = tf.numpy_function(make, [k], (tf.float32, tf.float32), name="galmorph_batch")
        x.set_shape(shape)
        y.set_shape((None, n_classes))
        return x, y

    ds = tf.data.Dataset.range(epochs * n)
    ds = ds.map(load, num_parallel_calls=max(1, s.loader_workers), deterministic=True)
    return ds.prefetch(s.prefetch or 1)


class _Reporter(keras.callbacks.Callback):
    def __init__(self, reporter: training.EpochReporter, val_batches, stream, eval_batch: int):
        super().__init__()
        self.reporter = reporter
        self.stream = stream
        self.n_train_images = stream.images_per_epoch
        self.val_batches = val_batches
        self.best_weights = None
        self.error = None

    def on_epoch_begin(self, epoch, logs=None):
        self.reporter.start_epoch()

    def on_epoch_end(self, epoch, logs=None):
        train_time = self.reporter.elapsed()
        recalibrate_bn(self.model, training.recalibration_batches(self.stream, epoch))
        proba = predict_proba(self.model, self.val_batches())
        decision = self.reporter.end_epoch(
            epoch, logs["loss"], logs["accuracy"], proba, self.n_train_images, epoch_time_s=train_time
        )
        if decision.improved:
            self.best_weights = self.model.get_weights()
        if decision.stop:
            self.model.stop_training = True


def _compile(model, hyper: training.Hyper, s: acceleration.Settings) -> None:
    """fit()'s optimiser, loss and XLA setting, under the strategy the model was built in."""
    with model.distribute_strategy.scope():  # the optimiser's variables are mirrored too
        opt = _optimizer(hyper)
        if s.loss_scaling:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        model.compile(
            optimizer=opt,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=hyper.label_smoothing),
            metrics=["accuracy"],
            jit_compile=s.compile,
        )


def fit(model, stream, val_batches, hyper: training.Hyper, reporter: training.EpochReporter):
    """Train `model` on `stream` for up to hyper.epochs; restore the best validation-loss weights.

    The model must come from build(spec, hyper) (its precision policy and strategy).
    """
    s = settings(hyper)
    _compile(model, hyper, s)
    callback = _Reporter(reporter, val_batches, stream, hyper.eval_batch_size)
    class_weight = dict(enumerate(hyper.class_weight)) if hyper.class_weight else None
    with model.distribute_strategy.scope():
        model.fit(dataset(stream, model.output_shape[-1], hyper.epochs, s), epochs=hyper.epochs,
                  steps_per_epoch=len(stream), shuffle=False, callbacks=[callback], class_weight=class_weight,
                  verbose=0)
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    return model


def step_rate(model, hyper: training.Hyper, x: np.ndarray, y: np.ndarray, steps: int, warmup: int = 3,
              blocks: int = 1) -> list[float]:
    """Images/s of fit()'s training step on one batch already on the device, for each of
    `blocks` timed blocks of `steps` steps: the compute-only ceiling of the input pipeline
    (same compile settings, optimiser, loss and precision as fit)."""
    import tensorflow as tf

    s = settings(hyper)
    _compile(model, hyper, s)
    onehot = np.eye(model.output_shape[-1], dtype=np.float32)[y]
    with tf.device("/gpu:0" if _gpus() else "/cpu:0"):
        xd, yd = tf.constant(x), tf.constant(onehot)
    model.train_on_batch(xd, yd)  # builds the optimiser and the step function

    def run(n):
        logs = None
        for _ in range(n):
            logs = model.train_function([(xd, yd, None)])  # fit's compiled step, no data adapter
        keras.tree.map_structure(np.asarray, logs)  # waits for the device

    return training.block_rates(run, steps, x.shape[0], warmup, blocks)


def predict_proba(model, batches) -> np.ndarray:
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # predict_on_batch would hand every replica the whole batch; predict splits it
        out = [np.asarray(model.predict(x, batch_size=len(x), verbose=0)) for x in batches]
    else:
        out = [np.asarray(model.predict_on_batch(x)) for x in batches]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def device_stats() -> dict:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return {}
    info = tf.config.experimental.get_memory_info("GPU:0")
    return {"gpu_peak_memory_mb": info["peak"] / 2**20}


def log_model(model, name: str, input_example: np.ndarray) -> str:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, predict_proba(model, [input_example]))
    with _example_dir_first():
        info = mlflow.keras.log_model(
            model, name=name, signature=signature, input_example=input_example,
            pip_requirements=[f"keras=={keras.__version__}", _tf_requirement()],
        )
    return info.model_uri


@contextlib.contextmanager
def _example_dir_first():
    """mlflow.keras.save_model (MLflow 3.17) writes the input example before it creates the
    model folder and fails with FileNotFoundError; create the folder first."""
    from mlflow.keras import save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model, input_example, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


def _tf_requirement() -> str:
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return f"{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "tensorflow"


def recalibrate_bn(model: keras.Model, batches) -> None:
    """Re-estimate every BatchNormalization's moving statistics as the plain average over
    `batches` (NHWC float32 arrays) with the current weights (training.BN_RECALIBRATION_BATCHES)."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return
    momenta = [layer.momentum for layer in bns]
    try:
        for k, x in enumerate(batches):
            for layer in bns:  # moving = moving * k/(k+1) + batch / (k+1): the running mean of k+1 batches
                layer.momentum = k / (k + 1)
            model(x, training=True)
    finally:
        for layer, momentum in zip(bns, momenta):
            layer.momentum = momentum
