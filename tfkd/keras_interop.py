"""The noisy teacher for users of Keras' built-in `keras.distillation.Distiller`.

    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=tfkd.NoisyLogitRegression(sigma=0.8, alpha=0.15, seed=0),
        student_loss_weight=0.0)   # 0: pure logit regression, as in the article

Limits, by the built-in Distiller's design (Keras 3.15):
  - it calls `compute_loss` the same way in `fit` and in `evaluate`, so the noise is applied during evaluation
    too: `evaluate`'s distillation loss is noisy (accuracy metrics are not affected; they use the student's
    outputs). `tfkd.Distiller` evaluates the noise-free equation 1.
  - it runs the teacher every step; `tfkd.Distiller` can stream cached logits instead.
  - the loss it reports is `(1 - student_loss_weight) * L`, and its `T` is the replica's batch, not the global one.
"""

from __future__ import annotations

import keras

from tfkd.losses import logit_regression_loss
from tfkd.noise import stateless_perturb_logits, validate_noise


@keras.saving.register_keras_serializable(package="tfkd")
class NoisyLogitRegression(keras.distillation.DistillationLoss):
    """Equations 1 and 2 as a `keras.distillation.DistillationLoss`: the teacher's logits, perturbed on an
    `alpha` fraction of the rows by `(1 + eps)`, `eps ~ N(0, sigma^2)`, regressed by the student's logits.

    `teacher_outputs` and `student_outputs` are `[n, k]` logits. New noise on every call, from a
    `keras.random.SeedGenerator` (`seed` makes the sequence repeatable).
    """

    def __init__(self, sigma: float = 0.8, alpha: float = 0.15, seed: int | None = None):
        validate_noise(sigma, alpha)
        self.sigma = float(sigma)
        self.alpha = float(alpha)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def validate_outputs(self, teacher_outputs, student_outputs):
        super().validate_outputs(teacher_outputs, student_outputs)
        if tuple(teacher_outputs.shape[1:]) != tuple(student_outputs.shape[1:]):
            raise ValueError(
                f"teacher and student logits must have the same shape, got {tuple(teacher_outputs.shape)} and "
                f"{tuple(student_outputs.shape)}")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        targets = stateless_perturb_logits(teacher_outputs, self.sigma, self.alpha, self.seed_generator.next())
        return logit_regression_loss(targets, student_outputs)

    def get_config(self) -> dict:
        return {"sigma": self.sigma, "alpha": self.alpha, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
