"""Seconds per epoch of plain training vs distillation, all in one process, on MNIST with batch 64.

  python benchmarks/distill_speed.py --out results/speed.json       # full: 50,000 images, 3 timed epochs
  python benchmarks/distill_speed.py --quick                         # smoke: 5,000 images, < 2 minutes

(a) plain supervised student (cross-entropy): the floor; (b) tfkd.Distiller running the teacher every step;
(c) tfkd.Distiller with cached teacher logits (computing the cache is timed separately); (d) Keras' built-in
keras.distillation.Distiller with LogitsDistillation (temperature 3) and the same teacher and student, at its
defaults and at tfkd's steps_per_execution. Every variant uses the same pipeline, optimizer and batch size; the
figure is the median epoch time over the timed epochs after one warm-up epoch. The teacher is an untrained
LeNet: its weights do not change its cost. Results: JSON (`--out`) and a markdown table beside it.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkd  # noqa: E402
from tfkd import artifacts, data, experiment  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_boolean("quick", False, "5,000 images and 2 timed epochs: a smoke run under two minutes.")
flags.DEFINE_string("out", "results/speed.json", "Where the JSON goes; the markdown table goes beside it (.md).")
flags.DEFINE_integer("epochs", 5, "Timed epochs per variant (after one warm-up epoch), taken in turns.")
flags.DEFINE_integer("steps_per_execution", experiment.RunConfig().steps_per_execution,
                     "Steps per compiled call for tfkd's variants (run.py's default).")


def _sgd():
    return keras.optimizers.SGD(0.001, momentum=0.9)


def _epoch_seconds(model, dataset) -> float:
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start


def _variants(teacher, plain_data, cached_data, spe):
    """(key, label, compiled model, dataset) for every variant, built the same way."""
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    student = tfkd.models.mlp_student()
    student.compile(_sgd(), cross_entropy, metrics=["accuracy"], steps_per_execution=spe)
    online = tfkd.Distiller(tfkd.models.mlp_student(), teacher, sigma=0.8, seed=0)
    online.compile(_sgd(), metrics=["accuracy"], steps_per_execution=spe)
    cached = tfkd.Distiller(tfkd.models.mlp_student(), teacher, sigma=0.8, seed=0)
    cached.compile(_sgd(), metrics=["accuracy"], steps_per_execution=spe)
    cached_xla = tfkd.Distiller(tfkd.models.mlp_student(), teacher, sigma=0.8, seed=0)
    cached_xla.compile(_sgd(), metrics=["accuracy"], steps_per_execution=spe, jit_compile=True)
    variants = [
        ("plain_student_s", "(a) plain student, cross-entropy", student, plain_data),
        ("distiller_online_s", "(b) tfkd.Distiller, teacher every step", online, plain_data),
        ("distiller_cached_s", "(c) tfkd.Distiller, cached logits", cached, cached_data),
        ("distiller_cached_xla_s", "(c') tfkd.Distiller, cached logits, XLA", cached_xla, cached_data),
    ]
    for key, label, kwargs in [
        ("keras_distiller_s", "(d) keras.distillation.Distiller, defaults", {}),
        ("keras_distiller_same_spe_s", f"(d') keras.distillation.Distiller, steps_per_execution={spe}",
         {"steps_per_execution": spe}),
    ]:
        builtin = keras.distillation.Distiller(
            teacher=teacher, student=tfkd.models.mlp_student(),
            distillation_losses=keras.distillation.LogitsDistillation(temperature=3.0), student_loss_weight=0.5)
        builtin.compile(_sgd(), loss=cross_entropy, metrics=["accuracy"], **kwargs)
        variants.append((key, label, builtin, plain_data))
    return variants


def main(argv):
    del argv
    epochs = 2 if FLAGS.quick else FLAGS.epochs
    spe = FLAGS.steps_per_execution
    mnist = data.load_mnist()
    train = mnist.train.take(5000 if FLAGS.quick else data.TRAIN_SIZE)
    keras.utils.set_random_seed(0)
    teacher = tfkd.models.lenet_teacher()
    plain_data = data.make_dataset(train, 64, shuffle_seed=0)
    start = time.perf_counter()
    logits = tfkd.compute_teacher_logits(teacher, data.make_dataset(train, 1000))
    cache_seconds = time.perf_counter() - start
    cached_data = data.make_dataset(train, 64, shuffle_seed=0, teacher_logits=logits)
    variants = _variants(teacher, plain_data, cached_data, spe)
    for _, _, model, dataset in variants:
        _epoch_seconds(model, dataset)  # warm-up: tracing and first-touch allocations
    # Interleaved rounds (a, b, c, d, d', a, b, ...): a slow spell of this shared machine hits every variant
    # alike instead of whichever happened to run then.
    seconds = {key: [] for key, _, _, _ in variants}
    for round_index in range(epochs):
        for key, label, model, dataset in variants:
            seconds[key].append(_epoch_seconds(model, dataset))
            print(f"round {round_index + 1}: {label}: {seconds[key][-1]:.2f} s", flush=True)
    results = {"teacher_logits_cache_s": round(cache_seconds, 3), "epochs_s": {}}
    rows = []
    for key, label, _, _ in variants:
        median = statistics.median(seconds[key])
        results[key] = round(median, 3)
        results[key.replace("_s", "_images_per_s")] = round(len(train) / median, 1)
        results["epochs_s"][key] = [round(s, 3) for s in seconds[key]]
        rows.append((label, median))
    results.update({
        "cached_over_plain": round(results["distiller_cached_s"] / results["plain_student_s"], 3),
        "cached_over_keras": round(results["distiller_cached_s"] / results["keras_distiller_s"], 3),
        "cached_over_keras_same_spe": round(results["distiller_cached_s"] / results["keras_distiller_same_spe_s"], 3),
        "online_over_plain": round(results["distiller_online_s"] / results["plain_student_s"], 3),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "images": len(train), "batch_size": 64, "timed_epochs": epochs, "steps_per_execution": spe,
        "command": " ".join(["python"] + sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tensorflow": tf.__version__, "keras": keras.__version__,
    })
    artifacts.write_json(FLAGS.out, results)
    lines = [f"# Distillation speed ({len(train):,} MNIST images, batch 64, median of {epochs} interleaved epochs)",
             "",
             f"Command: `{results['command']}`; TF {tf.__version__}, Keras {keras.__version__}, "
             f"{results['machine']}; peak memory {results['peak_memory_mb']} MB.", "",
             "| variant | s / epoch | images / s | ratio to (a) |", "|---|---|---|---|"]
    for label, seconds in rows:
        lines.append(f"| {label} | {seconds:.2f} | {len(train) / seconds:,.0f} | "
                     f"{seconds / results['plain_student_s']:.2f} |")
    lines += ["", f"Computing the teacher's logits once: {results['teacher_logits_cache_s']:.2f} s.", "",
              f"(c)/(a) = {results['cached_over_plain']} (target <= 1.05); "
              f"(c)/(d) = {results['cached_over_keras']} (target <= 0.5); "
              f"(c)/(d') = {results['cached_over_keras_same_spe']}.", ""]
    artifacts.write_text(os.path.splitext(FLAGS.out)[0] + ".md", "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
