"""Keras fitting: model.fit on a tf.data pipeline of galmorph batches, with a callback that
calls the neutral per-epoch reporter (early stopping and pruning decided there).

Performance settings (galmorph.core.acceleration decides what `auto` means): a mixed_bfloat16 /
mixed_float16 dtype policy (fp16 with a LossScaleOptimizer), XLA (jit_compile), batches made
by tf.data worker threads ahead of the step, and a tf.distribute strategy: OneDeviceStrategy
on one GPU (its dataset prefetches to the GPU), MirroredStrategy over several.
"""

from __future__ import annotations

import keras
import numpy as np

from galmorph.backends.keras.device import _gpus, settings
from galmorph.core import acceleration, training


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


def dataset(stream, n_classes: int, epochs: int, s: acceleration.Settings, start: int = 0):
    """Every training batch of epochs `start` to `epochs - 1` as one tf.data pipeline of (x, one-hot y).

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

    ds = tf.data.Dataset.range(start * n, epochs * n)
    ds = ds.map(load, num_parallel_calls=max(1, s.loader_workers), deterministic=True)
    return ds.prefetch(s.prefetch or 1)


class _Reporter(keras.callbacks.Callback):
    # Keras may then call on_train_batch_end from its thread pool, after the step's logs are
    # ready, instead of waiting for every step in the training loop (reporter.batch_done is thread-safe)
    async_safe = True

    def __init__(self, reporter: training.EpochReporter, val_batches, stream, hyper: training.Hyper, checkpoints=None):
        super().__init__()
        self.reporter = reporter
        self.hyper = hyper
        self.checkpoints = checkpoints
        self.stream = stream
        self.n_train_images = stream.images_per_epoch
        self.val_batches = val_batches
        self.best_weights = None
        self.error = None

    def on_epoch_begin(self, epoch, logs=None):
        # the epoch's rate (training.lr_at), read by the compiled step from the optimiser's
        # variable; Keras's decoupled weight decay uses the same variable
        self.model.optimizer.learning_rate = training.lr_at(epoch, self.hyper)
        self.reporter.start_epoch(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        # batch i of an epoch holds batch_size images, the last one the rest
        self.reporter.batch_done(min(self.stream.batch_size, self.n_train_images - batch * self.stream.batch_size))

    def on_epoch_end(self, epoch, logs=None):
        train_time = self.reporter.elapsed()
        recalibrate_bn(self.model, training.recalibration_batches(self.stream, epoch))
        proba = predict_proba(self.model, self.val_batches())
        decision = self.reporter.end_epoch(
            epoch, logs["loss"], logs["accuracy"], proba, self.n_train_images, epoch_time_s=train_time
        )
        if decision.improved:
            self.best_weights = self.model.get_weights()
        if self.checkpoints is not None:
            self.checkpoints.save(epoch, self.reporter, decision.improved, decision.stop,
                                  lambda path: save_state(self.model, self.model.optimizer, path))
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


def fit(model, stream, val_batches, hyper: training.Hyper, reporter: training.EpochReporter, checkpoints=None):
    """Train `model` on `stream` for up to hyper.epochs; restore the best validation-loss weights.

    The model must come from build(spec, hyper) (its precision policy and strategy).
    With `checkpoints` (galmorph.core.checkpoints.Checkpointer) the state is saved after every
    epoch, and a `checkpoints.resume` checkpoint is continued from (model.fit's initial_epoch;
    the reporter is restored by the caller).
    """
    s = settings(hyper)
    _compile(model, hyper, s)
    callback = _Reporter(reporter, val_batches, stream, hyper, checkpoints)
    class_weight = dict(enumerate(hyper.class_weight)) if hyper.class_weight else None
    start = 0
    resume = checkpoints.resume if checkpoints is not None else None
    if resume is not None:
        if resume.best is not None:
            restore_state(model, model.optimizer, resume.best)
            callback.best_weights = model.get_weights()
        restore_state(model, model.optimizer, resume.state)
        start = resume.next_epoch(hyper.epochs)
    if start < hyper.epochs:
        with model.distribute_strategy.scope():
            model.fit(dataset(stream, model.output_shape[-1], hyper.epochs, s, start), epochs=hyper.epochs,
                      initial_epoch=start, steps_per_epoch=len(stream), shuffle=False, callbacks=[callback],
                      class_weight=class_weight, verbose=0)
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    return model


def save_state(model, trainer, path) -> None:
    """Write to `path` what continuing fit() needs: every variable of `model` (weights,
    batch-norm statistics and the dropout layers' seed-generator states) and of `trainer`
    (fit's optimiser: its step count and moments; a loss-scale optimiser's scale too)."""
    values = {f"model_{i}": np.asarray(v) for i, v in enumerate(model.variables)}
    if trainer is not None and trainer.built:
        values.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(trainer.variables)})
    with open(path, "wb") as fh:  # a file object: numpy adds no .npz to the name
        np.savez(fh, **values)


def restore_state(model, trainer, path) -> None:
    """Load into `model` and `trainer` (fit's optimiser, built here if it is not yet) a `save_state` file."""
    with np.load(path) as saved:
        values = dict(saved)
    with model.distribute_strategy.scope():
        if any(k.startswith("optimizer_") for k in values) and not trainer.built:
            trainer.build(model.trainable_variables)
        for prefix, variables in (("model", model.variables), ("optimizer", trainer.variables)):
            n = sum(k.startswith(prefix + "_") for k in values)
            if prefix == "optimizer" and n == 0:
                continue
            if n != len(variables):
                raise ValueError(f"{path} holds {n} {prefix} variables, the {prefix} has {len(variables)}")
            for i, v in enumerate(variables):
                v.assign(values[f"{prefix}_{i}"])


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


def recalibrate_bn(model: keras.Model, batches) -> None:
    """Re-estimate every BatchNormalization's moving statistics as the plain average over
    `batches` (NHWC float32 arrays) with the current weights (training.BN_RECALIBRATION_BATCHES)."""
    bns = [layer for layer in model.layers  # frozen ones (fine-tuning) keep the source's statistics
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
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
