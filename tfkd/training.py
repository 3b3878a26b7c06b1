"""Training pieces shared by the teacher and the students: the SGD schedule, callbacks, error counts."""

from __future__ import annotations

import math
import os
import time

import keras
import numpy as np
from absl import logging

from tfkd import artifacts
from tfkd.data import Split, make_dataset
from tfkd.models import lenet_teacher


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def sgd(learning_rate: float, momentum: float, total_steps: int, clipnorm: float | None = None):
    """SGD (equation 3) with momentum and a cosine decay of the learning rate to 0 over `total_steps`."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total_steps))
    return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, clipnorm=clipnorm)


def count_errors(model: keras.Model, split: Split, batch_size: int = 1000) -> int:
    """Misclassified images of `split` (argmax of the logits against the labels)."""
    logits = model.predict(make_dataset(split, batch_size), verbose=0)
    return int(np.sum(np.argmax(logits, axis=-1) != split.labels))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` as soon as the running loss is NaN or infinite (no silent garbage)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at batch {batch}: lower --learning_rate"
            )


class EpochLog(keras.callbacks.Callback):
    """Writes one JSON line per finished epoch; a resumed run rewrites the epochs it repeats."""

    def __init__(self, path: str, extra=None):
        super().__init__()
        self.path = path
        self.extra = extra or (lambda: {})
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "epoch_seconds": round(time.perf_counter() - self._start, 3)}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row.update(self.extra())
        rows = [r for r in artifacts.read_jsonl(self.path) if r.get("epoch", 0) < epoch + 1]
        artifacts.write_jsonl(self.path, rows + [row])


class KeepBestWeights(keras.callbacks.Callback):
    """Model selection on the validation split: keeps the weights of the epoch with the fewest validation
    errors in a file (so a resumed run remembers them) and restores them when training ends."""

    def __init__(self, validation: Split, directory: str, batch_size: int = 1000):
        super().__init__()
        self.validation = validation
        self.weights_path = os.path.join(directory, "best.weights.h5")
        self.state_path = os.path.join(directory, "best.json")
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        errors = count_errors(self.model, self.validation, self.batch_size)
        if logs is not None:
            logs["val_errors"] = errors
        best = artifacts.read_json(self.state_path)
        if best is None or errors < best["val_errors"] or not os.path.exists(self.weights_path):
            # Keras insists on the ".weights.h5" ending, so the temporary file gets it too.
            temporary = os.path.join(os.path.dirname(self.weights_path), ".best.tmp.weights.h5")
            self.model.save_weights(temporary)
            os.replace(temporary, self.weights_path)
            artifacts.write_json(self.state_path, {"val_errors": errors, "epoch": epoch + 1})

    def on_train_end(self, logs=None):
        if os.path.exists(self.weights_path):
            self.model.load_weights(self.weights_path)

    def best(self) -> dict | None:
        return artifacts.read_json(self.state_path)


def train_teacher(
    train: Split,
    validation: Split,
    work_dir: str,
    epochs: int = 20,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 64,
    dropout: float = 0.0,
    seed: int = 0,
    verbose: int = 1,
) -> tuple[keras.Model, dict]:
    """Trains the LeNet teacher with cross-entropy and SGD; returns the weights of its best validation epoch.

    `work_dir` holds the resumable state (BackupAndRestore checkpoint, best weights, `teacher_metrics.jsonl`),
    so a killed teacher training continues from its last finished epoch.
    """
    keras.utils.set_random_seed(seed)
    teacher = lenet_teacher(dropout=dropout)
    steps = epochs * math.ceil(len(train) / batch_size)
    teacher.compile(
        optimizer=sgd(learning_rate, momentum, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keep_best = KeepBestWeights(validation, work_dir)
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(work_dir, "backup")),
        StopOnNonFiniteLoss(),
        keep_best,
        EpochLog(os.path.join(work_dir, "teacher_metrics.jsonl")),
    ]
    logging.info("training the teacher: %d epochs on %d images", epochs, len(train))
    # The pipeline shuffles (seeded); fit's own shuffle does not apply to a tf.data.Dataset.
    teacher.fit(make_dataset(train, batch_size, shuffle_seed=seed), epochs=epochs, callbacks=callbacks,
                shuffle=False, verbose=verbose)
    return teacher, keep_best.best() or {}
