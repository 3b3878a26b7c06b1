"""Runs the Distiller under `tf.distribute` in a fresh process and prints what it measured as one JSON line.

Used by `test_distribute.py`, not collected by pytest. Device set-up must come before TensorFlow starts, which
another test in the same process will have done already, hence a process of its own:

  python tests/distribute_checks.py mirrored   # 2 logical CPUs: one device vs MirroredStrategy, and the noise
  python tests/distribute_checks.py worker     # one worker of the cluster in TF_CONFIG (MultiWorkerMirrored)
"""

import json
import sys

import tensorflow as tf

MODE = sys.argv[1]
if MODE == "mirrored":
    # Two logical devices on the one CPU: MirroredStrategy then has two replicas, no GPU needed.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from tfkd.distribute import make_strategy  # noqa: E402  (after the device set-up)

# MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
STRATEGY = make_strategy("multi_worker") if MODE == "worker" else None

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfkd  # noqa: E402

# Rows chosen so that the last batch of 32 splits badly: 249 -> 25 rows (13 + 12), 225 -> 1 row (1 + 0).
SCENARIOS = {"online": dict(rows=249, cached=False), "cached": dict(rows=225, cached=True)}
CLIPNORM = 0.05  # small enough that every step clips, so the order "sum, then clip" matters


def _tiny(units: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(units, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


def fit(strategy: tf.distribute.Strategy, rows: int, cached: bool, epochs: int = 2) -> dict:
    """Plain logit regression (sigma 0) on fixed data and initial weights; the numbers a run reports."""
    rng = np.random.default_rng(0)
    x = rng.random((rows, 8), dtype=np.float32)  # (rows, 8)
    y = rng.integers(0, 4, rows)
    with strategy.scope():
        teacher, student = _tiny(16, seed=0), _tiny(8, seed=1)
        distiller = tfkd.Distiller(student, teacher, sigma=0.0, seed=0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=CLIPNORM),
                          metrics=["accuracy"])
    inputs = {"inputs": x, "teacher_logits": tfkd.compute_teacher_logits(teacher, x)} if cached else x
    history = distiller.fit(inputs, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0).history
    evaluation = distiller.evaluate(inputs, y, batch_size=32, verbose=0, return_dict=True)
    return {"replicas": strategy.num_replicas_in_sync, "loss": history["loss"],
            "accuracy": history["accuracy"], "eval_loss": evaluation["loss"],
            "eval_accuracy": evaluation["accuracy"],
            "weights": [w.ravel().tolist() for w in student.get_weights()]}


def noise(strategy: tf.distribute.Strategy, rows_per_replica: int = 2000, alpha: float = 0.15) -> dict:
    """The targets each replica would regress in one step, for all-ones teacher logits."""
    with strategy.scope():
        distiller = tfkd.Distiller(_tiny(8, 1), _tiny(16, 0), sigma=0.5, alpha=alpha, seed=7)
        distiller.compile(optimizer="sgd")
        distiller.optimizer.build(distiller.student.trainable_variables)
    logits = tf.ones((rows_per_replica * strategy.num_replicas_in_sync, 4))  # one global batch, (R * n, 4)
    batch = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(logits))))

    @tf.function
    def step(local_logits):
        return distiller._noisy_targets(local_logits), distiller._noise_seed_pair()

    targets, seed_pairs = strategy.run(step, args=(batch,))
    targets = [t.numpy() for t in strategy.experimental_local_results(targets)]  # R x (n, 4)
    perturbed = [np.any(t != 1.0, axis=1) for t in targets]  # R x (n,)
    return {"replicas": strategy.num_replicas_in_sync, "rows": [len(t) for t in targets],
            "perturbed_fraction": float(np.mean(np.concatenate(perturbed))),
            "perturbed_fraction_per_replica": [float(np.mean(p)) for p in perturbed],
            "same_rows_perturbed": bool(np.array_equal(perturbed[0], perturbed[-1])),
            "same_targets": bool(np.array_equal(targets[0], targets[-1])),
            "seed_pairs": [p.numpy().tolist() for p in strategy.experimental_local_results(seed_pairs)]}


def main() -> None:
    if MODE == "mirrored":
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        result = {name: {"single": fit(tf.distribute.get_strategy(), **kwargs), "mirrored": fit(mirrored, **kwargs)}
                  for name, kwargs in SCENARIOS.items()}
        result["noise"] = noise(mirrored)
    else:
        result = {"cached": fit(STRATEGY, **SCENARIOS["cached"])}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
