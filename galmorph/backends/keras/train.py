"""Keras fitting: model.fit on a PyDataset of galmorph batches, with a callback that calls
the neutral per-epoch reporter (early stopping and pruning decided there)."""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np

from galmorph import system, training


def setup(seed: int, threads: int = 0) -> dict:
    import tensorflow as tf

    threads = threads or system.cpu_count()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # already initialised in this process
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


class _Batches(keras.utils.PyDataset):
    """One training epoch of a galmorph TrainStream; a new shuffled plan each epoch."""

    def __init__(self, stream, n_classes: int):
        super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)
        self.stream = stream
        self.n_classes = n_classes
        self.epoch = 0
        self._plan = stream.plan(0)
        self._eye = np.eye(n_classes, dtype=np.float32)

    def __len__(self):
        return len(self.stream)

    def __getitem__(self, i):
        x, y = self.stream.get(self._plan, i)
        return x, self._eye[y]

    def on_epoch_end(self):
        self.epoch += 1
        self._plan = self.stream.plan(self.epoch)


class _Reporter(keras.callbacks.Callback):
    def __init__(self, reporter: training.EpochReporter, val_batches, n_train_images: int, eval_batch: int):
        super().__init__()
        self.reporter = reporter
        self.val_batches = val_batches
        self.n_train_images = n_train_images
        self.best_weights = None
        self.error = None

    def on_epoch_begin(self, epoch, logs=None):
        self.reporter.start_epoch()

    def on_epoch_end(self, epoch, logs=None):
        train_time = self.reporter.elapsed()
        proba = predict_proba(self.model, self.val_batches())
        decision = self.reporter.end_epoch(
            epoch, logs["loss"], logs["accuracy"], proba, self.n_train_images, epoch_time_s=train_time
        )
        if decision.improved:
            self.best_weights = self.model.get_weights()
        if decision.stop:
            self.model.stop_training = True


def fit(model, stream, val_batches, hyper: training.Hyper, reporter: training.EpochReporter):
    """Train `model` on `stream` for up to hyper.epochs; restore the best validation-loss weights."""
    model.compile(
        optimizer=_optimizer(hyper),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=hyper.label_smoothing),
        metrics=["accuracy"],
        jit_compile=False,
    )
    callback = _Reporter(reporter, val_batches, stream.images_per_epoch, hyper.eval_batch_size)
    class_weight = dict(enumerate(hyper.class_weight)) if hyper.class_weight else None
    model.fit(_Batches(stream, model.output_shape[-1]), epochs=hyper.epochs, callbacks=[callback],
              class_weight=class_weight, verbose=0)
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    return model


def predict_proba(model, batches) -> np.ndarray:
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
