"""What the student regresses when there are K real teachers (the comparison the noisy teacher claims to imitate).

Both rules take the teachers' logits stacked as `[n, K, k]` (sample, teacher, class) and return `[n, k]`.
"""

from __future__ import annotations

import tensorflow as tf


def mean_teacher_logits(teacher_logits: tf.Tensor) -> tf.Tensor:
    """`multi_teacher_mean`: `z_i = 1/K sum_j z_ij`, the ensemble's average logits. `[n, K, k] -> [n, k]`."""
    return tf.reduce_mean(tf.convert_to_tensor(teacher_logits), axis=1)


def random_teacher_logits(teacher_logits: tf.Tensor, seed_pair: tf.Tensor) -> tf.Tensor:
    """`multi_teacher_random`: for each sample (and each step, through `seed_pair`) the logits of one teacher
    drawn uniformly from the K. `[n, K, k] -> [n, k]`; `seed_pair` is an int `[2]` stateless seed."""
    teacher_logits = tf.convert_to_tensor(teacher_logits)
    shape = tf.shape(teacher_logits)
    choice = tf.random.stateless_uniform([shape[0]], seed=tf.cast(seed_pair, tf.int64), minval=0,
                                         maxval=shape[1], dtype=tf.int32)  # (n,)
    return tf.gather(teacher_logits, choice, axis=1, batch_dims=1)
