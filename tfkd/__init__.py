"""tfkd: knowledge distillation from noisy teachers (Sau & Balasubramanian 2016) for Keras 3 on TensorFlow."""

from tfkd import models
from tfkd.distiller import Distiller, compute_teacher_logits
from tfkd.export import evaluate_tflite, export_tflite, tflite_predict
from tfkd.losses import logit_regression_loss
from tfkd.noise import perturb_logits

__version__ = "0.1.0"

__all__ = ["Distiller", "compute_teacher_logits", "evaluate_tflite", "export_tflite", "logit_regression_loss",
           "models", "perturb_logits", "tflite_predict"]
