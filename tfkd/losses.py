"""Logit regression (equation 1, Ba & Caruana 2014): `L = 1/(2T) * sum_i ||g(x_i) - z~_i||^2`."""

from __future__ import annotations

import tensorflow as tf


def logit_regression_loss(teacher_logits, student_logits, batch_size=None) -> tf.Tensor:
    """Equation 1: the squared L2 distance between logits, summed, divided by twice the batch size.

    Args:
      teacher_logits: targets `z~`, shape `[T, k]` (Keras order: target first).
      student_logits: predictions `g(x)`, shape `[T, k]`.
      batch_size: the `T` of equation 1. Defaults to the number of rows; under `tf.distribute` the Distiller
        passes the global batch size so that summing the replicas' losses gives equation 1 over the global batch.

    Returns:
      A float32 scalar.
    """
    teacher_logits = tf.cast(teacher_logits, tf.float32)
    student_logits = tf.cast(student_logits, tf.float32)
    if batch_size is None:
        batch_size = tf.shape(student_logits)[0]
    squared = tf.reduce_sum(tf.square(student_logits - teacher_logits))
    return squared / (2.0 * tf.cast(batch_size, tf.float32))
