import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd


def _tiny(units, outputs=10, seed=0, name=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(outputs)(x), name=name)


def _data(rows=256, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, rows)


def _distiller(sigma=0.5, seed=0, student_seed=1, **kwargs):
    teacher = _tiny(32, seed=0, name="teacher")
    student = _tiny(16, seed=student_seed, name="student")
    distiller = tfkd.Distiller(student, teacher, sigma=sigma, alpha=0.15, seed=seed, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    return distiller


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_teacher_frozen_student_trained_and_loss_falls():
    distiller = _distiller()
    teacher_before, student_before = _weights(distiller.teacher), _weights(distiller.student)
    x, y = _data()
    history = distiller.fit(x, y, epochs=12, batch_size=32, verbose=0).history
    for before, after in zip(teacher_before, _weights(distiller.teacher)):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(student_before, _weights(distiller.student)))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert "accuracy" in history and len(distiller.trainable_weights) == len(distiller.student.trainable_weights)


def test_call_and_predict_are_the_students():
    distiller = _distiller()
    x, _ = _data(64)
    np.testing.assert_allclose(distiller.predict(x, verbose=0), distiller.student.predict(x, verbose=0))
    assert not np.allclose(distiller.predict(x, verbose=0), distiller.teacher.predict(x, verbose=0))


def test_labels_only_feed_metrics():
    x, y = _data()
    first, second = _distiller(), _distiller()
    first.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    second.fit(x, np.roll(y, 1), epochs=1, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(_weights(first.student), _weights(second.student)):
        np.testing.assert_array_equal(a, b)


def test_seed_repeats_and_noise_changes_training():
    x, y = _data()
    runs = {}
    for key, sigma, seed in [("a", 0.8, 3), ("b", 0.8, 3), ("c", 0.8, 4), ("plain", 0.0, 3)]:
        distiller = _distiller(sigma=sigma, seed=seed)
        distiller.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
        runs[key] = _weights(distiller.student)
    assert all(np.array_equal(a, b) for a, b in zip(runs["a"], runs["b"]))
    assert not all(np.array_equal(a, c) for a, c in zip(runs["a"], runs["c"]))
    assert not all(np.array_equal(a, p) for a, p in zip(runs["a"], runs["plain"]))


def test_noise_is_new_every_step():
    distiller = _distiller(sigma=0.8, seed=0)
    distiller.optimizer.build(distiller.student.trainable_variables)
    pairs = []
    for step in range(3):
        distiller.optimizer.iterations.assign(step)
        pairs.append(tuple(distiller._noise_seed_pair().numpy()))
    assert len(set(pairs)) == 3


def test_cached_logits_match_online_teacher():
    x, y = _data()
    online, cached = _distiller(sigma=0.8, seed=5), _distiller(sigma=0.8, seed=5)
    online.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    logits = tfkd.compute_teacher_logits(cached.teacher, x)
    cached.fit({"inputs": x, "teacher_logits": logits}, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(_weights(online.student), _weights(cached.student)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_test_step_is_noise_free_equation_one():
    distiller = _distiller(sigma=5.0)
    x, y = _data(128)
    result = distiller.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)
    expected = tfkd.logit_regression_loss(distiller.teacher(x), distiller.student(x))
    assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_save_and_load_round_trip(tmp_path):
    distiller = _distiller(sigma=0.3, seed=11)
    x, y = _data(64)
    distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, tfkd.Distiller)
    assert (restored.sigma, restored.alpha, restored.seed) == (0.3, 0.15, 11)
    assert not restored.teacher.trainable
    np.testing.assert_allclose(restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6)
    restored.fit(x, y, epochs=1, batch_size=32, verbose=0)  # compiled on load, trainable on


def test_get_config_carries_hyper_parameters():
    config = _distiller(sigma=0.7, seed=2).get_config()
    assert config["sigma"] == 0.7 and config["alpha"] == 0.15 and config["seed"] == 2
    assert config["student"]["config"]["name"] == "student" and config["teacher"]["config"]["name"] == "teacher"


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": -0.5}, "sigma.*-0.5"), ({"alpha": 1.2}, "alpha.*1.2"), ({"alpha": -0.1}, "alpha.*-0.1"),
    ({"seed": "zero"}, "seed.*zero")])
def test_bad_hyper_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfkd.Distiller(_tiny(4), _tiny(4), **kwargs)


def test_output_shapes_must_match_at_construction():
    with pytest.raises(ValueError, match=r"shape.*\(None, 10\).*\(None, 5\)"):
        tfkd.Distiller(_tiny(4, outputs=5), _tiny(4, outputs=10))


class SubclassedNet(keras.Model):
    def __init__(self, outputs):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(outputs)

    def call(self, x):
        return self.dense(self.flatten(x))


def test_output_shapes_must_match_at_first_build():
    distiller = tfkd.Distiller(SubclassedNet(5), SubclassedNet(10))
    distiller.compile(optimizer="sgd")
    x, y = _data(32)
    with pytest.raises(ValueError, match="shape"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_loss_cannot_be_replaced():
    distiller = tfkd.Distiller(_tiny(4), _tiny(4))
    with pytest.raises(ValueError, match="loss"):
        distiller.compile(optimizer="sgd", loss="mse")
