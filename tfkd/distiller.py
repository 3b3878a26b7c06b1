"""`Distiller`: a Keras model whose `train_step` distils a frozen teacher into a student by noisy logit regression.

One step (equations 1-3 of `METHOD.md`): teacher logits `z` (computed now, or read from a cache streamed with the
images) -> `z~` = equation 2 on a random `alpha` fraction of the rows -> `L` = equation 1 -> gradients of the
student's variables only -> `optimizer.apply` (plain SGD in the article).
"""

from __future__ import annotations

import random

import keras
import numpy as np
import tensorflow as tf

from tfkd.losses import logit_regression_loss
from tfkd.noise import stateless_perturb_logits, validate_noise

INPUTS_KEY = "inputs"
TEACHER_LOGITS_KEY = "teacher_logits"


def split_inputs(x):
    """Returns `(inputs, teacher_logits or None)` from plain inputs or a `{"inputs", "teacher_logits"}` dict."""
    if isinstance(x, dict) and TEACHER_LOGITS_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_LOGITS_KEY]
    return x, None


def compute_teacher_logits(teacher: keras.Model, images, batch_size: int = 1000) -> np.ndarray:
    """The teacher's logits for every image, `[n, k]` float32, in inference mode (the cache of the fast path).

    Exact for a frozen teacher and un-augmented inputs: the same logits the on-the-fly path would compute.
    """
    logits = teacher.predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(logits, dtype=np.float32)


def _static_shape(model) -> tuple | None:
    outputs = getattr(model, "outputs", None)
    if outputs and len(outputs) == 1:
        return tuple(outputs[0].shape)
    return None


def _check_same_shape(teacher_shape, student_shape) -> None:
    if teacher_shape is None or student_shape is None:
        return
    teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
    if len(teacher_shape) != len(student_shape) or any(
        t is not None and s is not None and t != s for t, s in zip(teacher_shape, student_shape)
    ):
        raise ValueError(
            "teacher and student must output logits of the same shape, got teacher output shape "
            f"{teacher_shape} and student output shape {student_shape}"
        )


def _global_rows(local_logits: tf.Tensor) -> tf.Tensor:
    """The number of rows in this step's batch over all replicas (float32 scalar): the `T` of equation 1.

    Summed across replicas rather than taken as `local rows * replicas`: the last batch of an epoch splits
    unevenly (25 rows -> 13 + 12), and a replica may get no row at all, which would make `0 / 0` a NaN loss.
    """
    rows = tf.cast(tf.shape(local_logits)[0], tf.float32)
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return rows
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, rows)


def _multi_worker(strategy) -> bool:
    # Keras's own test for "collectives span several workers" (`trainer._collective_all_reduce_multi_worker`).
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def _clips(optimizer) -> bool:
    # A LossScaleOptimizer holds no clipping of its own (its inner optimizer does): it keeps Keras's behaviour.
    return bool(optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue)


def _sum_then_clip(optimizer, gradients: list, replicas: int) -> list:
    """Gradients to hand to `optimizer.apply` in a replica context so that the step clips the *global* gradient.

    Keras 3 (TF backend) clips each replica's gradient and only then sums them across replicas
    (`BaseOptimizer._backend_apply_gradients` -> `TFOptimizer._all_reduce_sum_gradients`), so a clipped step
    would change with the number of replicas. Here the sum comes first, then the optimizer's own clipping rule,
    and each replica passes on `1/replicas` of the result: its norm (or largest value) is below the threshold, so
    the optimizer's clipping leaves it unchanged, and the optimizer's sum rebuilds the clipped global gradient.
    Costs one more all-reduce of the gradients, only when clipping is on.
    """
    present = [i for i, g in enumerate(gradients) if g is not None]
    summed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, [gradients[i] for i in present])
    if optimizer.clipnorm:
        clipped = [tf.clip_by_norm(g, optimizer.clipnorm) for g in summed]
    elif optimizer.global_clipnorm:
        clipped, _ = tf.clip_by_global_norm(summed, optimizer.global_clipnorm)
    else:
        clipped = [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in summed]
    gradients = list(gradients)
    for i, g in zip(present, clipped):
        gradients[i] = tf.math.scalar_mul(1.0 / replicas, g)  # also right for IndexedSlices
    return gradients


@keras.saving.register_keras_serializable(package="tfkd")
class Distiller(keras.Model):
    """Noisy-teacher logit-regression distillation (Sau & Balasubramanian 2016) as a `keras.Model`.

    Args:
      student: the model trained; `call` returns its logits, so `evaluate`, `predict` and export use it alone.
      teacher: frozen (`trainable = False`, called with `training=False`), same output shape as the student.
      sigma: standard deviation of the multiplicative noise `eps` (equation 2); 0 is plain logit regression.
      alpha: probability that a sample's logits are perturbed in a step.
      seed: an int fixes the noise sequence (a function of the seed, the optimizer step and the replica);
        `None` picks a random one.

    Data for `fit`: `(x, y)` runs the teacher every step; `({"inputs": x, "teacher_logits": z}, y)` uses cached
    logits `z` (see `compute_teacher_logits`). Labels `y` only feed the compiled metrics; they may be omitted.

    Under `tf.distribute` (create and compile it inside `strategy.scope()`; `batch_size` is the global batch):
    `T` of equation 1 is the global batch, so with `sigma = 0` a step, its loss and its metrics are those of one
    device; with noise, each replica draws its own (so the draws, not their distribution, change with the number
    of replicas). Keras 3.15 cannot run `steps_per_execution > 1` with several replicas: keep it at 1 there.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, sigma: float = 0.0,
                 alpha: float = 0.15, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        validate_noise(sigma, alpha)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if student is teacher:
            raise ValueError("student and teacher must be two different models, got the same model twice")
        if self._teacher_matches_student:
            _check_same_shape(_static_shape(teacher), _static_shape(student))
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.sigma = float(sigma)
        self.alpha = float(alpha)
        self.seed = None if seed is None else int(seed)
        self._noise_seed = self.seed if self.seed is not None else random.randrange(2**31)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        if getattr(student, "built", False) and getattr(teacher, "built", False):
            # Both sub-models exist already; callbacks such as BackupAndRestore need a built model.
            self.built = True

    @property
    def metrics(self):
        # Our tracker holds equation 1; the one `compile` creates would never be updated, so it is left out.
        return [self.loss_tracker] + [m for m in super().metrics if m.name != "loss"]

    def compile(self, optimizer="sgd", metrics=None, **kwargs):
        if kwargs.get("loss") is not None:
            raise ValueError(
                f"Distiller's loss is logit regression (equation 1) and cannot be set, got loss={kwargs['loss']!r}"
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Called by `load_model`; Keras skips an overridden `compile` unless this is defined too.
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.student.trainable_variables)

    def build(self, input_shape=None):
        # Nothing of our own to create: both models are built by their first call.
        self.built = True

    def call(self, inputs, training=False):
        inputs, _ = split_inputs(inputs)
        return self.student(inputs, training=training)

    def _noise_seed_pair(self) -> tf.Tensor:
        # Stateless noise keyed on (seed, step, replica): new noise every step and on every replica, the same
        # sequence for the same seed, and a run resumed from a checkpoint continues the same sequence.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        step = tf.cast(self.optimizer.iterations, tf.int64)
        counter = step * replicas + tf.cast(replica, tf.int64)
        return tf.stack([tf.constant(self._noise_seed, tf.int64), counter])

    def _noisy_targets(self, teacher_logits: tf.Tensor) -> tf.Tensor:
        """Equation 2 on this replica's `[n, k]` teacher logits, with this step's and this replica's draws."""
        return stateless_perturb_logits(teacher_logits, self.sigma, self.alpha, self._noise_seed_pair())

    # Hooks for other methods (tfkd.methods): what the student regresses, and the loss. The article's method:
    # equation 2 targets in training, the clean logits in evaluation; equation 1 as the loss.
    _teacher_matches_student = True

    def _targets(self, teacher_logits, training):
        return self._noisy_targets(teacher_logits) if training else teacher_logits

    def _distillation_loss(self, targets, student_logits, labels, global_batch):
        return logit_regression_loss(targets, student_logits, batch_size=global_batch)

    def _teacher_logits(self, inputs, cached):
        if cached is None:
            # Frozen teacher in inference mode (no dropout, fixed batch-norm statistics).
            cached = self.teacher(inputs, training=False)
        return tf.stop_gradient(tf.cast(cached, tf.float32))

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, cached = split_inputs(x)
        teacher_logits = self._teacher_logits(inputs, cached)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = _global_rows(teacher_logits)
        # A fresh alpha-fraction of the rows gets (1 + eps) * z: the "several teachers" the method simulates.
        targets = self._targets(teacher_logits, training=True)
        with tf.GradientTape() as tape:
            student_logits = self.student(inputs, training=True)
            _check_same_shape(targets.shape, student_logits.shape)
            # T in equation 1 is the global batch: `optimizer.apply` sums the replicas' gradients (Keras 3, TF
            # backend: an all-reduce SUM), so the step is the same whatever the number of replicas.
            loss = self._distillation_loss(targets, student_logits, y, global_batch)
            if self.student.losses:
                loss += tf.add_n(self.student.losses) / replicas
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.student.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        if replicas > 1 and _clips(self.optimizer):
            gradients = _sum_then_clip(self.optimizer, gradients, replicas)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(loss * replicas)
        return self._metric_results(x, y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        inputs, cached = split_inputs(x)
        teacher_logits = self._teacher_logits(inputs, cached)
        student_logits = self.student(inputs, training=False)
        targets = self._targets(teacher_logits, training=False)
        _check_same_shape(targets.shape, student_logits.shape)
        # As in `train_step`: each replica's share of equation 1 over the global batch, so that the tracker's
        # mean over replicas, times their number, is equation 1 over the global batch.
        loss = self._distillation_loss(targets, student_logits, y, _global_rows(teacher_logits))
        self.loss_tracker.update_state(loss * tf.distribute.get_strategy().num_replicas_in_sync)
        return self._metric_results(x, y, student_logits, sample_weight)

    def _metric_results(self, x, y, student_logits, sample_weight):
        if y is None:
            results = self.get_metrics_result()
        else:
            results = self.compute_metrics(x, y, student_logits, sample_weight=sample_weight)
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3.15 averages a step's outputs over workers with `strategy.reduce("MEAN", v, axis=0)`, which
            # fails on scalars (keras-team/keras#20585); a leading axis of 1 is reduced away again.
            results = keras.tree.map_structure(lambda value: tf.expand_dims(value, 0), results)
        return results

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 reduces the whole first batch with one `strategy.reduce`, which MultiWorkerMirroredStrategy
        # cannot do for a nested batch (keras-team/keras#20585). The build needs only shapes and dtypes: hand it
        # this worker's first replica's share of the batch instead. Other strategies keep Keras's path.
        strategy = self.distribute_strategy
        if iterator is not None and _multi_worker(strategy):
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = keras.tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], batch)
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            student=keras.saving.serialize_keras_object(self.student),
            teacher=keras.saving.serialize_keras_object(self.teacher),
            sigma=self.sigma,
            alpha=self.alpha,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
