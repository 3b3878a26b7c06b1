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

import json
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
flags.DEFINE_integer("epochs", 3, "Timed epochs per variant (after one warm-up epoch).")
flags.DEFINE_integer("steps_per_execution", experiment.RunConfig().steps_per_execution,
                     "Steps per compiled call for tfkd's variants (run.py's default).")


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _sgd():
    return keras.optimizers.SGD(0.001, momentum=0.9)


def _time_fit(model, dataset, epochs):
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs + 1, verbose=0, callbacks=[timer])
    timed = timer.seconds[1:]  # the first epoch pays for tracing
    return {"median_s": statistics.median(timed), "epochs_s": [round(s, 3) for s in timer.seconds]}


def main(argv):
    del argv
    epochs = 2 if FLAGS.quick else FLAGS.epochs
    spe = FLAGS.steps_per_execution
    mnist = data.load_mnist()
    train = mnist.train.take(5000 if FLAGS.quick else data.TRAIN_SIZE)
    keras.utils.set_random_seed(0)
    teacher = tfkd.models.lenet_teacher()
    plain_data = data.make_dataset(train, 64, shuffle_seed=0)
    results, rows = {}, []

    def record(key, label, timing):
        results[key] = round(timing["median_s"], 3)
        results[key.replace("_s", "_images_per_s")] = round(len(train) / timing["median_s"], 1)
        results.setdefault("epochs_s", {})[key] = timing["epochs_s"]
        rows.append((label, timing["median_s"]))
        print(f"{label}: {timing['median_s']:.2f} s/epoch", flush=True)

    student = tfkd.models.mlp_student()
    student.compile(_sgd(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                    steps_per_execution=spe)
    record("plain_student_s", "(a) plain student, cross-entropy", _time_fit(student, plain_data, epochs))

    online = tfkd.Distiller(tfkd.models.mlp_student(), teacher, sigma=0.8, seed=0)
    online.compile(_sgd(), metrics=["accuracy"], steps_per_execution=spe)
    record("distiller_online_s", "(b) tfkd.Distiller, teacher every step", _time_fit(online, plain_data, epochs))

    start = time.perf_counter()
    logits = tfkd.compute_teacher_logits(teacher, data.make_dataset(train, 1000))
    results["teacher_logits_cache_s"] = round(time.perf_counter() - start, 3)
    cached_data = data.make_dataset(train, 64, shuffle_seed=0, teacher_logits=logits)
    cached = tfkd.Distiller(tfkd.models.mlp_student(), teacher, sigma=0.8, seed=0)
    cached.compile(_sgd(), metrics=["accuracy"], steps_per_execution=spe)
    record("distiller_cached_s", "(c) tfkd.Distiller, cached logits", _time_fit(cached, cached_data, epochs))

    for key, label, kwargs in [
        ("keras_distiller_s", "(d) keras.distillation.Distiller, defaults", {}),
        ("keras_distiller_same_spe_s", f"(d') keras.distillation.Distiller, steps_per_execution={spe}",
         {"steps_per_execution": spe}),
    ]:
        builtin = keras.distillation.Distiller(
            teacher=teacher, student=tfkd.models.mlp_student(),
            distillation_losses=keras.distillation.LogitsDistillation(temperature=3.0), student_loss_weight=0.5)
        builtin.compile(_sgd(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"], **kwargs)
        record(key, label, _time_fit(builtin, plain_data, epochs))

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
    lines = [f"# Distillation speed ({len(train):,} MNIST images, batch 64, median of {epochs} epochs)", "",
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
