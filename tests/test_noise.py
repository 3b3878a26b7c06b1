import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd.noise import apply_noise, stateless_perturb_logits


def _logits(rows=20000, classes=10, seed=0):
    # Strictly positive, so that z~ / z - 1 recovers eps exactly.
    return np.random.default_rng(seed).uniform(1.0, 5.0, size=(rows, classes)).astype(np.float32)


def _perturbed_rows(original, perturbed):
    return np.any(original != perturbed, axis=1)


def test_selected_fraction_is_alpha():
    z = _logits()
    out = tfkd.perturb_logits(z, sigma=0.5, alpha=0.15, seed=1).numpy()
    fraction = _perturbed_rows(z, out).mean()
    # 20,000 rows: the standard error of the fraction is ~0.0025.
    assert abs(fraction - 0.15) < 0.015


def test_selection_is_per_sample_not_per_batch():
    z = _logits(rows=64)
    counts = {int(_perturbed_rows(z, tfkd.perturb_logits(z, 0.5, 0.15, seed=s).numpy()).sum()) for s in range(50)}
    # One coin per batch would give only {0, 64}.
    assert len(counts) > 3
    assert all(0 < c < 64 for c in counts if c not in (0,)) and max(counts) < 64


def test_eps_mean_and_std_and_varies_across_classes():
    z = _logits()
    sigma = 0.8
    out = tfkd.perturb_logits(z, sigma=sigma, alpha=0.5, seed=3).numpy()
    rows = _perturbed_rows(z, out)
    eps = out[rows] / z[rows] - 1.0
    assert abs(eps.mean()) < 0.02
    assert abs(eps.std() - sigma) < 0.02
    # A fresh eps for every class: within one row the classes differ.
    assert np.all(eps.std(axis=1) > 0)


def test_untouched_rows_are_bit_for_bit_identical():
    z = _logits(rows=1000)
    out = tfkd.perturb_logits(z, sigma=1.0, alpha=0.3, seed=4).numpy()
    untouched = ~_perturbed_rows(z, out)
    assert untouched.sum() > 500
    assert np.array_equal(out[untouched].view(np.uint32), z[untouched].view(np.uint32))


@pytest.mark.parametrize("sigma, alpha", [(0.0, 0.15), (0.8, 0.0)])
def test_identity_cases(sigma, alpha):
    z = _logits(rows=100)
    assert np.array_equal(tfkd.perturb_logits(z, sigma=sigma, alpha=alpha).numpy(), z)


def test_alpha_one_perturbs_every_row():
    z = _logits(rows=200)
    assert _perturbed_rows(z, tfkd.perturb_logits(z, 0.5, 1.0, seed=0).numpy()).all()


def test_seeded_calls_repeat_and_unseeded_calls_differ():
    z = _logits(rows=500)
    first = tfkd.perturb_logits(z, 0.5, 0.5, seed=7).numpy()
    assert np.array_equal(first, tfkd.perturb_logits(z, 0.5, 0.5, seed=7).numpy())
    assert not np.array_equal(first, tfkd.perturb_logits(z, 0.5, 0.5, seed=8).numpy())
    assert not np.array_equal(tfkd.perturb_logits(z, 0.5, 0.5).numpy(), tfkd.perturb_logits(z, 0.5, 0.5).numpy())


def test_runs_inside_tf_function_and_xla():
    z = tf.constant(_logits(rows=256))

    @tf.function(jit_compile=True)
    def perturb(logits, seed_pair):
        return stateless_perturb_logits(logits, 0.5, 0.5, seed_pair)

    out = perturb(z, tf.constant([1, 2], tf.int64)).numpy()
    again = perturb(z, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)
    assert 0.3 < _perturbed_rows(z.numpy(), out).mean() < 0.7


def test_apply_noise_formula():
    z = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    uniform = tf.constant([[0.1], [0.9]])
    normal = tf.constant([[1.0, -1.0], [5.0, 5.0]])
    out = apply_noise(z, sigma=0.5, alpha=0.15, uniform=uniform, normal=normal).numpy()
    np.testing.assert_allclose(out, [[1.5, 1.0], [3.0, 4.0]])


@pytest.mark.parametrize("sigma, alpha, message", [
    (-0.1, 0.15, "sigma"), (float("nan"), 0.15, "sigma"), (0.5, -0.01, "alpha"), (0.5, 1.5, "alpha")])
def test_bad_values_raise(sigma, alpha, message):
    with pytest.raises(ValueError, match=message):
        tfkd.perturb_logits(np.ones((2, 3), np.float32), sigma, alpha)
