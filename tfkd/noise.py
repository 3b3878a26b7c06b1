"""The noisy teacher: multiplicative Gaussian noise on a random subset of logit rows.

Equation 2 of the article (Sau & Balasubramanian 2016, restated by Stetsenko & Talko 2019): each sample of a
mini-batch is chosen independently with probability `alpha`; a chosen row becomes `(1 + eps) * z` with
`eps ~ N(0, sigma^2 I_k)` drawn afresh for every class; rows not chosen are returned unchanged.
"""

from __future__ import annotations

import math

import tensorflow as tf


def validate_noise(sigma: float, alpha: float) -> None:
    """Raises ValueError unless `sigma >= 0` (finite) and `0 <= alpha <= 1`."""
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1 inclusive, got {alpha!r}")


def apply_noise(
    logits: tf.Tensor, sigma: float, alpha: float, uniform: tf.Tensor, normal: tf.Tensor
) -> tf.Tensor:
    """Equation 2 given the random draws.

    Args:
      logits: teacher logits `z`, shape `[n, k]`.
      uniform: `U(0, 1)` draws, shape `[n, 1]`: row `i` is perturbed when `uniform[i] < alpha`.
      normal: `N(0, 1)` draws, shape `[n, k]`, so `eps = sigma * normal`.

    Returns:
      `z~`, shape `[n, k]`; rows not selected are the input rows, bit for bit (`tf.where` copies them).
    """
    selected = uniform < alpha  # (n, 1), broadcast over classes
    noisy = logits * (1.0 + sigma * normal)
    return tf.where(selected, noisy, logits)


def _draw_shapes(logits: tf.Tensor):
    shape = tf.shape(logits)
    return tf.stack([shape[0], 1]), shape


def perturb_logits(
    logits, sigma: float, alpha: float, seed: int | None = None
) -> tf.Tensor:
    """Perturbs teacher logits as in equation 2: `z~_i = (1 + eps_i) * z_i` for rows chosen with prob. `alpha`.

    Args:
      logits: teacher logits `z`, shape `[n, k]` (any float dtype).
      sigma: standard deviation of `eps`, >= 0.
      alpha: probability that a row is perturbed, in `[0, 1]`.
      seed: an int makes the call repeatable (stateless `tf.random` ops); `None` draws fresh noise each call.

    Returns:
      `z~`, shape `[n, k]`, same dtype as `logits`. `sigma == 0` or `alpha == 0` returns `logits` unchanged.
    """
    validate_noise(sigma, alpha)
    logits = tf.convert_to_tensor(logits)
    if sigma == 0 or alpha == 0:
        return tf.identity(logits)
    row_shape, full_shape = _draw_shapes(logits)
    if seed is None:
        uniform = tf.random.uniform(row_shape, dtype=logits.dtype)
        normal = tf.random.normal(full_shape, dtype=logits.dtype)
    else:
        return stateless_perturb_logits(logits, sigma, alpha, tf.constant([int(seed), 0], tf.int64))
    return apply_noise(logits, sigma, alpha, uniform, normal)


def stateless_perturb_logits(
    logits: tf.Tensor, sigma: float, alpha: float, seed_pair: tf.Tensor
) -> tf.Tensor:
    """Equation 2 with draws fully determined by `seed_pair` (shape `[2]`, int), for use inside a train step.

    The Distiller derives `seed_pair` from its seed, the optimizer step and the replica, so every step and every
    replica gets new noise while a run stays repeatable and resumable.
    """
    if sigma == 0 or alpha == 0:
        return logits
    row_shape, full_shape = _draw_shapes(logits)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed_pair, tf.int64), num=2)
    uniform = tf.random.stateless_uniform(row_shape, seed=seeds[0], dtype=logits.dtype)
    normal = tf.random.stateless_normal(full_shape, seed=seeds[1], dtype=logits.dtype)
    return apply_noise(logits, sigma, alpha, uniform, normal)
