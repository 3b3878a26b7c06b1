"""MNIST for the article's setup: 50,000 training, 10,000 validation and 10,000 test images.

Splits (through `tfds.load("mnist")`): training = the first 50,000 images of the official training split,
validation = its last 10,000, test = the official 10,000 test images. Images stay uint8 `[n, 28, 28, 1]` in
memory; the `tf.data` pipelines scale pixels to float32 in `[0, 1]` (`x / 255`), the only preprocessing.

Offline use: TFDS reads a prepared copy from `TFDS_DATA_DIR` (or `data_dir`) and never downloads it again;
`TFKD_OFFLINE=1` forbids any download.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import numpy as np
import tensorflow as tf

from tfkd.distiller import INPUTS_KEY, TEACHER_LOGITS_KEY

TRAIN_SIZE = 50_000
VALIDATION_SIZE = 10_000
TEST_SIZE = 10_000
SPLITS = {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"}
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


class DataUnavailableError(RuntimeError):
    """MNIST is neither prepared locally nor downloadable."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory: `images` uint8 `[n, 28, 28, 1]`, `labels` int64 `[n]`."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int) -> "Split":
        return Split(self.images[:count], self.labels[:count])


@dataclasses.dataclass(frozen=True)
class Mnist:
    train: Split
    validation: Split
    test: Split


def _can_reach_download_host(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def load_mnist(data_dir: str | None = None) -> Mnist:
    """Loads the three splits into memory; raises `DataUnavailableError` at once if MNIST cannot be had."""
    import tensorflow_datasets as tfds  # imported here: it is slow to import and only this function needs it

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    builder = tfds.builder("mnist", data_dir=data_dir)
    if not builder.is_prepared():
        # TFKD_OFFLINE=1 forbids downloads outright (tests use it); otherwise a quick probe avoids a long hang.
        if os.environ.get("TFKD_OFFLINE") == "1" or not _can_reach_download_host():
            raise DataUnavailableError(
                f"MNIST is not prepared in {builder.data_dir!r} and cannot be downloaded (no network): "
                "set TFDS_DATA_DIR to a tensorflow-datasets directory that holds mnist/3.0.1"
            )
        builder.download_and_prepare()
    arrays = tfds.as_numpy(
        builder.as_dataset(split=list(SPLITS.values()), as_supervised=True, batch_size=-1)
    )
    splits = [Split(np.asarray(images, np.uint8), np.asarray(labels, np.int64)) for images, labels in arrays]
    return Mnist(*splits)


def scale_images(images) -> tf.Tensor:
    """uint8 pixels `[..., 28, 28, 1]` -> float32 in `[0, 1]`."""
    return tf.cast(images, tf.float32) / 255.0


def make_dataset(
    split: Split,
    batch_size: int,
    shuffle_seed: int | None = None,
    teacher_logits: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A batched, prefetched `tf.data` pipeline of `(images, labels)`.

    Args:
      split: images and labels in memory.
      batch_size: examples per batch; the last batch may be smaller.
      shuffle_seed: `None` keeps the order (evaluation); an int reshuffles every epoch, repeatably.
      teacher_logits: `[n, k]` cached teacher logits aligned with `split`; when given, the elements are
        `({"inputs": images, "teacher_logits": logits}, labels)`, the Distiller's cached-logits input.
    """
    features = split.images if teacher_logits is None else (split.images, teacher_logits)
    dataset = tf.data.Dataset.from_tensor_slices((features, split.labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def prepare(features, labels):
        # Scaling whole batches costs one op per step instead of one per image.
        if teacher_logits is None:
            return scale_images(features), labels
        images, logits = features
        return {INPUTS_KEY: scale_images(images), TEACHER_LOGITS_KEY: logits}, labels

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
