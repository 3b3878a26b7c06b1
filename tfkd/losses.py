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


def soft_target_loss(teacher_logits, student_logits, temperature: float = 4.0, labels=None,
                     hard_weight: float = 0.0) -> tf.Tensor:
    """Hinton, Vinyals & Dean (2015) distillation: `(1 - w) * T^2 * KL(softmax(z/T) || softmax(g/T)) + w * CE(y, g)`.

    The `T^2` keeps the soft term's gradients at the scale of the hard term's as `T` changes. `labels` (int `[n]`)
    are needed only when `hard_weight` (`w`) > 0. Mean over the `[n, k]` batch; a float32 scalar.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= hard_weight <= 1.0:
        raise ValueError(f"hard_weight must be between 0 and 1, got {hard_weight!r}")
    teacher_logits = tf.cast(teacher_logits, tf.float32)
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_log_probs = tf.nn.log_softmax(teacher_logits / temperature)
    student_log_probs = tf.nn.log_softmax(student_logits / temperature)
    kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    loss = (1.0 - hard_weight) * temperature**2 * tf.reduce_mean(kl)
    if hard_weight > 0:
        if labels is None:
            raise ValueError("labels are required when hard_weight > 0, got labels=None")
        hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=student_logits)
        loss += hard_weight * tf.reduce_mean(hard)
    return loss
