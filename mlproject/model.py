"""The tutorial's CNN, its tf.data input pipeline, and a fit loop with per-epoch progress.

TensorFlow/Keras are imported inside these functions: importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from typing import Callable

import numpy as np

from mlops_common import stop

from .datasets import Arrays

EpochHook = Callable[[int, dict[str, float]], None]


def tf_quiet():
    """Import TensorFlow with its C++ info/warning chatter turned down (unless the user set it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def seed_everything(seed: int) -> None:
    """Same seed, same data -> same initial weights and same batches (``fit`` trains with
    deterministic ops: ``deterministic_ops``)."""
    tf_quiet()
    import keras

    keras.utils.set_random_seed(seed)


@contextlib.contextmanager
def deterministic_ops():
    """TensorFlow's op determinism for the block (the training), then as it was before.

    Left on after training, every later ``predict`` on a NumPy array (our evaluation, MLflow's
    serving-input check when logging the model) went through tf.data's ``make_deterministic``
    rewrite of Keras' parallel map into a ``MapDataset`` that keeps the parallel op's
    ``use_unbounded_threadpool`` attribute, and TF 2.21 logged ``E... node_def_util.cc] NodeDef
    mentions attribute use_unbounded_threadpool which is not in the op definition``. Inference
    needs no such rewrite: ``mlops evaluate`` never ran with it."""
    tf_quiet()
    from tensorflow.python.framework import config  # no public disable_op_determinism in TF 2.21

    was = config.is_op_determinism_enabled()
    config.enable_op_determinism()
    try:
        yield
    finally:
        if not was:
            config.disable_op_determinism()


def compile_model(model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def build_model(input_shape: tuple[int, int, int], num_classes: int, learning_rate: float):
    """Conv2D(8 filters, 3x3, stride 2, relu) -> Flatten -> Dense(num_classes, softmax)."""
    tf_quiet()
    import keras

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="image_classifier")
    compile_model(model, learning_rate)
    return model


def input_pipeline(data: Arrays, batch_size: int, *, shuffle_seed: int | None = None):
    """A tf.data pipeline over (images, labels): optional seeded shuffle, batch, prefetch."""
    tf = tf_quiet()
    ds = tf.data.Dataset.from_tensor_slices((data.images, data.labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(data), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def format_epoch(epoch: int, epochs: int, logs: dict[str, float]) -> str:
    """One progress line per epoch, e.g. ``epoch 3/10  loss 0.41  accuracy 0.88 ...``."""
    parts = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
    return f"epoch {epoch + 1}/{epochs}  {parts}"


def fit(model, train: Arrays, validation: Arrays, *, epochs: int, batch_size: int, seed: int,
        on_epoch: EpochHook | None = None, stream=None) -> dict[str, list[float]]:
    """Train ``model``; print one line per epoch on stderr and call ``on_epoch(epoch, logs)``."""
    import keras

    out = stream or sys.stderr
    names = ("loss", "accuracy", "val_loss", "val_accuracy")

    class EpochProgress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stop.raise_if_asked()       # a cancel asked during the batch (mlops_common.stop)

        def on_test_batch_end(self, batch, logs=None):
            stop.raise_if_asked()

        def on_epoch_end(self, epoch, logs=None):
            stop.raise_if_asked()
            values = {k: float(logs[k]) for k in names if k in (logs or {})}
            print(format_epoch(epoch, epochs, values), file=out, flush=True)
            if on_epoch:
                on_epoch(epoch, values)
            if first_non_finite({k: [v] for k, v in values.items()}) is not None:
                self.model.stop_training = True     # diverged: more epochs cannot bring it back

    # a signal is raised after a batch, not inside TensorFlow's C++
    with stop.deferred(), deterministic_ops():
        history = model.fit(input_pipeline(train, batch_size, shuffle_seed=seed),
                            validation_data=input_pipeline(validation, batch_size),
                            epochs=epochs, verbose=0, shuffle=False,  # tf.data shuffles
                            callbacks=[EpochProgress()])
    return {k: [float(v) for v in history.history[k]] for k in names if k in history.history}


def first_non_finite(history: dict[str, list[float]]) -> tuple[int, str, float] | None:
    """The first epoch (0-based), metric and value of ``history`` that is NaN or infinite: a
    training that diverged (e.g. a learning rate far too high) and whose weights are unusable."""
    first = None
    for name, values in history.items():
        for epoch, value in enumerate(values):
            if not math.isfinite(value) and (first is None or epoch < first[0]):
                first = (epoch, name, value)
                break
    return first


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls to <function TensorFlowTrainer.make_predict_
    function...> triggered tf.function retracing" warning. Each model a process loads (the gate's
    candidate and production, a calibration's runs) gets its own predict function, traced once;
    TensorFlow counts those first traces together and, from the fifth model on, warned of a
    retracing cost that is not there, on stderr, where it buried the gate's own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACING = _NoRetracingWarning()


def predict(model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, num_classes) as float32. A signal meanwhile is raised once the
    predictions are made (``mlops_common.stop``), not inside TensorFlow's C++."""
    tf_logger = logging.getLogger("tensorflow")
    if _RETRACING not in tf_logger.filters:
        tf_logger.addFilter(_RETRACING)
    with stop.deferred():
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)
