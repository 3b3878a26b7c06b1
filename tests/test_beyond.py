"""Multi-teacher targets, soft targets, the Keras interop loss, and a tiny end-to-end comparison."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd import beyond, losses, methods, targets
from tfkd.keras_interop import NoisyLogitRegression


def _tiny(units, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _data(rows=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, rows)


def test_mean_rule_golden():
    stacked = np.array([[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [2.0, -2.0]]], np.float32)  # (n=2, K=2, k=2)
    np.testing.assert_allclose(targets.mean_teacher_logits(stacked).numpy(), [[2.0, 4.0], [1.0, -1.0]])


def test_random_rule_is_per_sample_and_uniform():
    n, teachers = 30000, 5
    # Teacher j's logits are all j, so the target's value says which teacher was drawn.
    stacked = np.broadcast_to(np.arange(teachers, dtype=np.float32)[None, :, None], (n, teachers, 3))
    chosen = targets.random_teacher_logits(stacked, tf.constant([1, 2], tf.int64)).numpy()
    assert np.all(chosen == chosen[:, :1])  # one teacher per row, all classes from it
    counts = np.bincount(chosen[:, 0].astype(int), minlength=teachers) / n
    np.testing.assert_allclose(counts, 0.2, atol=0.01)
    again = targets.random_teacher_logits(stacked, tf.constant([1, 3], tf.int64)).numpy()
    assert not np.array_equal(chosen, again)


def test_one_teacher_reduces_to_logit_regression():
    x, y = _data()
    teacher = _tiny(32)
    plain = tfkd.Distiller(_tiny(16, seed=1), teacher, sigma=0.0, seed=0)
    multi = methods.MultiTeacherDistiller(_tiny(16, seed=1), methods.stack_teachers([teacher]), rule="random",
                                          seed=0)
    for model in (plain, multi):
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(plain.student.get_weights(), multi.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_multi_teacher_trains_student_only_and_round_trips(tmp_path):
    x, y = _data()
    stack = methods.stack_teachers([_tiny(8, seed=s) for s in range(3)])
    assert stack(x[:4]).shape == (4, 3, 10)
    distiller = methods.MultiTeacherDistiller(_tiny(16, seed=1), stack, rule="mean", seed=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    before = [w.copy() for w in stack.get_weights()]
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert all(np.array_equal(a, b) for a, b in zip(before, stack.get_weights()))
    distiller.save(tmp_path / "multi.keras")
    restored = keras.saving.load_model(tmp_path / "multi.keras")
    assert isinstance(restored, methods.MultiTeacherDistiller) and restored.rule == "mean"
    np.testing.assert_allclose(restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="rule.*median"):
        methods.MultiTeacherDistiller(_tiny(4), stack, rule="median")


def test_soft_target_loss_golden_and_properties():
    z = np.array([[2.0, 0.0]], np.float32)
    g = np.array([[0.0, 0.0]], np.float32)
    # T = 1: p = softmax(2, 0) = (0.8808, 0.1192), q = (0.5, 0.5);
    # KL = 0.8808 ln(0.8808 / 0.5) + 0.1192 ln(0.1192 / 0.5) = 0.4987 - 0.1709 = 0.3278.
    assert float(losses.soft_target_loss(z, g, temperature=1.0)) == pytest.approx(0.3278, abs=1e-4)
    assert float(losses.soft_target_loss(z, z, temperature=4.0)) == pytest.approx(0.0, abs=1e-6)
    # Hard term only: cross-entropy of label 0 under uniform logits = log 2.
    assert float(losses.soft_target_loss(z, g, 2.0, labels=np.array([0]), hard_weight=1.0)) == pytest.approx(
        np.log(2), abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        losses.soft_target_loss(z, g, temperature=0.0)


def test_hinton_distiller_learns():
    x, y = _data()
    distiller = methods.SoftTargetDistiller(_tiny(16, seed=1), _tiny(32), temperature=4.0, hard_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=5, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


def test_noisy_loss_inside_keras_builtin_distiller():
    x, y = _data()
    teacher, student = _tiny(32), _tiny(16, seed=1)
    loss = NoisyLogitRegression(sigma=0.8, alpha=0.15, seed=0)
    builtin = keras.distillation.Distiller(teacher=teacher, student=student, distillation_losses=loss,
                                           student_loss_weight=0.0)
    builtin.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    history = builtin.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    # A fresh draw per step: the generator advanced once per batch.
    assert int(loss.seed_generator.state.numpy()[1]) >= 16
    # sigma 0 is exactly equation 1 between teacher and student logits.
    clean = NoisyLogitRegression(sigma=0.0)
    z, s = teacher(x), student(x)
    assert float(clean.compute_loss(z, s)) == pytest.approx(float(tfkd.logit_regression_loss(z, s)), rel=1e-6)
    assert NoisyLogitRegression.from_config(loss.get_config()).sigma == 0.8
    with pytest.raises(ValueError, match="sigma"):
        NoisyLogitRegression(sigma=-1.0)


def test_comparison_command_end_to_end(tmp_path):
    output_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    args = ["--output_dir", str(output_dir), "--results_dir", str(results_dir), "--seeds", "0",
            "--teachers", "2", "--epochs", "1", "--teacher_epochs", "1", "--train_size", "256"]
    assert beyond.main(args) == 0
    rows = list(csv.DictReader(open(output_dir / "beyond.csv")))
    assert sorted(r["method"] for r in rows) == sorted(beyond.METHODS)
    by_method = {r["method"]: r for r in rows}
    assert by_method["multi_teacher_mean"]["teachers"] == "2" and by_method["hinton_kd"]["teachers"] == "1"
    assert float(by_method["multi_teacher_mean"]["teacher_seconds"]) > float(
        by_method["logit_regression"]["teacher_seconds"])
    markdown = (results_dir / "beyond.md").read_text()
    assert "PARTIAL" in markdown and "multi_teacher_random" in markdown
    assert (results_dir / "beyond.png").stat().st_size > 10_000
    # Resumable: a second call finds every pair done and changes nothing.
    before = (output_dir / "beyond.csv").read_text()
    assert beyond.main(args) == 0
    assert (output_dir / "beyond.csv").read_text() == before
