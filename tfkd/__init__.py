"""tfkd: knowledge distillation from noisy teachers (Sau & Balasubramanian 2016) for Keras 3 on TensorFlow."""

from tfkd import models
from tfkd.distiller import Distiller, compute_teacher_logits
from tfkd.losses import logit_regression_loss
from tfkd.noise import perturb_logits

__version__ = "0.1.0"

__all__ = ["Distiller", "compute_teacher_logits", "logit_regression_loss", "models", "perturb_logits"]
