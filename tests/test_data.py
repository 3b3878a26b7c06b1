import numpy as np
import pytest
import tensorflow as tf

from tfkd import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist()


def test_split_sizes_dtype_and_range(mnist):
    assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (50_000, 10_000, 10_000)
    for split in (mnist.train, mnist.validation, mnist.test):
        assert split.images.shape[1:] == (28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64 and set(np.unique(split.labels)) == set(range(10))
    # Validation is the tail of the official training split, so it never overlaps the training images.
    assert not np.array_equal(mnist.train.images[-1], mnist.validation.images[0])


def test_pipeline_scales_batches_and_shuffles_repeatably(mnist):
    split = mnist.train.take(1000)
    images, labels = next(iter(data.make_dataset(split, 64)))
    assert images.shape == (64, 28, 28, 1) and images.dtype == tf.float32
    assert float(tf.reduce_min(images)) == 0.0 and float(tf.reduce_max(images)) == 1.0
    np.testing.assert_array_equal(labels.numpy(), split.labels[:64])
    first = next(iter(data.make_dataset(split, 64, shuffle_seed=1)))[1].numpy()
    again = next(iter(data.make_dataset(split, 64, shuffle_seed=1)))[1].numpy()
    other = next(iter(data.make_dataset(split, 64, shuffle_seed=2)))[1].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    batches = list(data.make_dataset(split, 64))
    assert len(batches) == 16 and batches[-1][0].shape[0] == 1000 - 15 * 64


def test_cached_logits_travel_with_their_images(mnist):
    split = mnist.train.take(200)
    logits = np.arange(200 * 10, dtype=np.float32).reshape(200, 10)
    for features, labels in data.make_dataset(split, 50, shuffle_seed=0, teacher_logits=logits):
        rows = (features["teacher_logits"].numpy()[:, 0] / 10).astype(int)
        np.testing.assert_array_equal(labels.numpy(), split.labels[rows])
        np.testing.assert_allclose(features["inputs"].numpy(), split.images[rows] / 255.0, atol=1e-7)


def test_missing_data_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_can_reach_download_host", lambda timeout=3.0: False)
    with pytest.raises(data.DataUnavailableError, match="TFDS_DATA_DIR"):
        data.load_mnist(str(tmp_path))
