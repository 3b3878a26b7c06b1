"""Distillation methods beside the article's, for comparing it with what it claims to imitate.

Each is a `Distiller` whose target rule or loss differs; `train_step` itself is shared:
  - `MultiTeacherDistiller(rule="mean")`: `multi_teacher_mean`, regress the K teachers' average logits.
  - `MultiTeacherDistiller(rule="random")`: `multi_teacher_random`, regress one teacher's logits drawn per
    sample and per step (what the noisy teacher's "several teachers" would be if they were real).
  - `SoftTargetDistiller`: `hinton_kd`, Hinton et al. (2015) soft targets at temperature T, optional hard term.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfkd.distiller import Distiller
from tfkd.losses import soft_target_loss
from tfkd.targets import mean_teacher_logits, random_teacher_logits

RULES = ("mean", "random")


def stack_teachers(teachers: list[keras.Model], name: str = "teacher_stack") -> keras.Model:
    """One frozen model whose output is the K teachers' logits stacked as `[n, K, k]` (sample, teacher, class)."""
    if not teachers:
        raise ValueError("stack_teachers needs at least one teacher, got an empty list")
    inputs = keras.Input(teachers[0].inputs[0].shape[1:], name="image")
    # Each teacher sits in its own wrapper: teachers loaded from files often share a name, which one model
    # may not hold twice.
    wrapped = [keras.Sequential([teacher], name=f"teacher_{index}") for index, teacher in enumerate(teachers)]
    outputs = [keras.layers.Reshape((1, -1), name=f"teacher_{index}_logits")(model(inputs, training=False))
               for index, model in enumerate(wrapped)]
    stacked = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(axis=1, name="stack")(outputs)
    model = keras.Model(inputs, stacked, name=name)
    model.trainable = False
    return model


@keras.saving.register_keras_serializable(package="tfkd")
class MultiTeacherDistiller(Distiller):
    """Logit regression (equation 1) on targets built from K real teachers instead of noise.

    Args:
      student: returns `[n, k]` logits.
      teacher: returns the stacked `[n, K, k]` logits (see `stack_teachers`); cached logits have that shape too.
      rule: `"mean"` or `"random"` (see `tfkd.targets`). Evaluation always uses the mean.
      seed: fixes the random teacher choices (a function of seed, step and replica, like the noise).
    """

    def __init__(self, student, teacher, rule: str = "mean", seed: int | None = None, **kwargs):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        kwargs.pop("sigma", None)
        kwargs.pop("alpha", None)
        self.rule = rule
        super().__init__(student, teacher, sigma=0.0, alpha=0.0, seed=seed, **kwargs)

    _teacher_matches_student = False  # the stack has one more axis; targets are checked against the student

    def _targets(self, teacher_logits, training):
        if training and self.rule == "random":
            return random_teacher_logits(teacher_logits, self._noise_seed_pair())
        return mean_teacher_logits(teacher_logits)

    def get_config(self):
        config = super().get_config()
        config.pop("sigma", None)
        config.pop("alpha", None)
        config["rule"] = self.rule
        return config


@keras.saving.register_keras_serializable(package="tfkd")
class SoftTargetDistiller(Distiller):
    """Hinton et al. (2015): `(1 - w) T^2 KL(softmax(z/T) || softmax(g/T)) + w CE(y, g)` (`soft_target_loss`).

    `hard_weight` (`w`) > 0 needs labels in the data.
    """

    def __init__(self, student, teacher, temperature: float = 4.0, hard_weight: float = 0.0,
                 seed: int | None = None, **kwargs):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0.0 <= hard_weight <= 1.0:
            raise ValueError(f"hard_weight must be between 0 and 1, got {hard_weight!r}")
        kwargs.pop("sigma", None)
        kwargs.pop("alpha", None)
        self.temperature = float(temperature)
        self.hard_weight = float(hard_weight)
        super().__init__(student, teacher, sigma=0.0, alpha=0.0, seed=seed, **kwargs)

    def _distillation_loss(self, targets, student_logits, labels, global_batch):
        # The mean over the replica's rows, scaled to its share of the global batch, like equation 1's T.
        rows = tf.cast(tf.shape(student_logits)[0], tf.float32)
        loss = soft_target_loss(targets, student_logits, self.temperature, labels, self.hard_weight)
        # multiply_no_nan: a replica given no rows of a short last batch has a NaN mean but no share.
        return tf.math.multiply_no_nan(loss, rows / tf.cast(global_batch, tf.float32))

    def get_config(self):
        config = super().get_config()
        config.pop("sigma", None)
        config.pop("alpha", None)
        config.update(temperature=self.temperature, hard_weight=self.hard_weight)
        return config
