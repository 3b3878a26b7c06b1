"""One distillation run and resumable sweeps of them: the article's experiment, end to end.

Layout of an output directory:
  teacher.keras, teacher.json        the shared teacher and the settings + errors it was trained with
  teacher_work/                      its resumable training state (removed once the teacher is saved)
  sweep.csv                          one row per finished (sigma, seed), appended as each run finishes
  failures.csv                       runs that stopped on an error (e.g. a non-finite loss): never results
  <run name>/config.json, metrics.jsonl, result.json, student.keras
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import logging

from tfkd import artifacts, distribute, training
from tfkd.data import TRAIN_SIZE, Mnist, load_mnist, make_dataset
from tfkd.distiller import Distiller, compute_teacher_logits
from tfkd.models import mlp_student
from tfkd.noise import validate_noise

SWEEP_COLUMNS = ["sigma", "alpha", "seed", "test_errors", "test_accuracy", "val_errors", "epochs",
                 "wall_seconds", "teacher_test_errors", "run_dir"]
FAILURE_COLUMNS = ["sigma", "alpha", "seed", "error"]


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run, with the defaults used for the committed results (see RESULTS.md)."""

    sigma: float = 0.0
    alpha: float = 0.15
    seed: int = 0
    epochs: int = 20  # student epochs
    batch_size: int = 64
    learning_rate: float = 0.005  # student: peak of the cosine schedule
    momentum: float = 0.9
    clipnorm: float | None = 10.0  # the L2 loss on raw logits is large early on; clipping keeps SGD stable
    train_size: int = TRAIN_SIZE
    cached_logits: bool = True  # exact here: the teacher is frozen and the inputs are not augmented
    steps_per_execution: int = 32
    teacher_epochs: int = 15
    teacher_learning_rate: float = 0.05
    teacher_momentum: float = 0.9
    teacher_dropout: float = 0.5
    teacher_seed: int = 0
    output_dir: str = "saved_models"

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting and what is allowed."""
        validate_noise(self.sigma, self.alpha)
        positive = {"batch_size": self.batch_size, "steps_per_execution": self.steps_per_execution}
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("epochs", "teacher_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.train_size, int) or not 0 < self.train_size <= TRAIN_SIZE:
            raise ValueError(f"train_size must be between 1 and {TRAIN_SIZE}, got {self.train_size!r}")
        for name in ("learning_rate", "teacher_learning_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def teacher_settings(self) -> dict:
        """What the shared teacher depends on: a cached teacher is reused only when all of these match."""
        return {"epochs": self.teacher_epochs, "learning_rate": self.teacher_learning_rate,
                "momentum": self.teacher_momentum, "dropout": self.teacher_dropout, "seed": self.teacher_seed,
                "batch_size": self.batch_size, "train_size": self.train_size}

    def run_name(self) -> str:
        return f"sigma{self.sigma:g}_alpha{self.alpha:g}_seed{self.seed}"

    def student_settings(self) -> dict:
        """Everything that determines a student run; a run directory holding other settings is not reused."""
        settings = dataclasses.asdict(self)
        settings.pop("output_dir")
        return settings


class ConfigError(ValueError):
    """A setting is not allowed, or clashes with what an output directory already holds."""


def make_deterministic(seed: int) -> None:
    """Same flags and seed -> same weights on CPU: seeds Python, NumPy and TF, and asks TF for determinism."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def check_output_dir(output_dir: str) -> Path:
    """Creates `output_dir` if needed; raises ValueError if it is a file or cannot be written to."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir must be a directory, got {output_dir!r}, which is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output_dir must be a writable directory, got {output_dir!r} ({error.strerror})")
    return path


def load_or_train_teacher(config: RunConfig, mnist: Mnist, verbose: int = 1,
                          name: str = "teacher") -> tuple[keras.Model, dict]:
    """The shared teacher: loaded from `<name>.keras` when it was trained with the same settings, otherwise
    trained (resumably) and saved. A truncated or corrupt file is reported in one line and retrained."""
    output_dir = Path(config.output_dir)
    model_path, info_path = output_dir / f"{name}.keras", output_dir / f"{name}.json"
    settings = config.teacher_settings()
    info = artifacts.read_json(info_path)
    if info is not None and info.get("settings") == settings and model_path.exists():
        try:
            teacher = keras.saving.load_model(model_path)
            logging.info("reusing the teacher in %s", model_path)
            return teacher, info
        except Exception as error:  # noqa: BLE001 - any unreadable file means "train it again"
            logging.warning("teacher file %s is unreadable (%s: %s); training it again", model_path,
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    elif model_path.exists():
        logging.info("the teacher in %s was trained with other settings; training a new one", model_path)
    train = mnist.train.take(config.train_size)
    start = time.perf_counter()
    work_dir = output_dir / f"{name}_work"
    teacher, best = training.train_teacher(
        train, mnist.validation, str(work_dir), epochs=config.teacher_epochs,
        learning_rate=config.teacher_learning_rate, momentum=config.teacher_momentum,
        batch_size=config.batch_size, dropout=config.teacher_dropout, seed=config.teacher_seed, verbose=verbose)
    info = {
        "settings": settings,
        "best_epoch": best.get("epoch"),
        "val_errors": training.count_errors(teacher, mnist.validation),
        "test_errors": training.count_errors(teacher, mnist.test),
        "parameters": teacher.count_params(),
        "train_seconds_this_process": round(time.perf_counter() - start, 1),
        # Every epoch's time, the ones before a kill included: the compute this teacher cost.
        "train_seconds": round(sum(r["epoch_seconds"] for r in artifacts.read_jsonl(
            work_dir / "teacher_metrics.jsonl")), 1),
    }
    with artifacts.atomic_path(model_path) as temporary:
        keras_path = temporary + ".keras"
        teacher.save(keras_path)
        os.replace(keras_path, temporary)
    artifacts.write_json(info_path, info)
    shutil.rmtree(work_dir, ignore_errors=True)
    return teacher, info


def _check_run_dir(run_dir: Path, settings: dict) -> None:
    existing = artifacts.read_json(run_dir / "config.json")
    if existing is None:
        return
    # A setting the directory's config does not mention did not exist when it was written: not a clash.
    changed = {k: (existing[k], v) for k, v in settings.items() if k in existing and existing[k] != v}
    if changed:
        name, (old, new) = next(iter(changed.items()))
        raise ConfigError(
            f"{run_dir} holds a run made with {name}={old!r}, not {new!r}: use another --output_dir"
        )


def noisy_teacher_distiller(student: keras.Model, teacher: keras.Model, config: RunConfig) -> Distiller:
    """The article's method: equation 2 noise on the teacher's logits, equation 1 loss."""
    return Distiller(student, teacher, sigma=config.sigma, alpha=config.alpha, seed=config.seed)


def distill(config: RunConfig, mnist: Mnist, teacher: keras.Model, verbose: int = 1, *,
            run_name: str | None = None, make_distiller=noisy_teacher_distiller,
            extra_settings: dict | None = None, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Distils one student (resuming from its last finished epoch) and returns its `result.json` content.

    `strategy` (default: none) spreads each step over its replicas; `batch_size` stays the global batch, and
    the Distiller keeps equation 1 over it, so each step is the one a single device takes on the same batch.

    `make_distiller(student, teacher, config)` builds the Distiller (another method than the article's);
    `run_name` and `extra_settings` then name its directory and record its own settings.
    """
    run_dir = Path(config.output_dir) / (run_name or config.run_name())
    settings = {**config.student_settings(), **(extra_settings or {})}
    _check_run_dir(run_dir, settings)
    finished = artifacts.read_json(run_dir / "result.json")
    if finished is not None and (run_dir / "student.keras").exists():
        return finished
    artifacts.write_json(run_dir / "config.json", settings)
    make_deterministic(config.seed)
    train = mnist.train.take(config.train_size)
    teacher_logits = compute_teacher_logits(teacher, make_dataset(train, 1000)) if config.cached_logits else None
    train_data = make_dataset(train, config.batch_size, shuffle_seed=config.seed, teacher_logits=teacher_logits)
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    # The student's, the optimizer's and the metrics' variables must be created in the strategy's scope.
    with strategy.scope():
        distiller = make_distiller(mlp_student(), teacher, config)
        distiller.compile(
            optimizer=training.sgd(config.learning_rate, config.momentum, config.epochs * steps_per_epoch,
                                   config.clipnorm),
            metrics=["accuracy"],
            # Several steps per call to the compiled function cut Python overhead for these small models;
            # Keras 3.15 fails with more than one step per call on several replicas.
            steps_per_execution=1 if replicas > 1 else min(config.steps_per_execution, steps_per_epoch))
    validation_data = make_dataset(mnist.validation, 1000)
    start = time.perf_counter()
    distiller.fit(
        train_data, epochs=config.epochs, validation_data=validation_data, verbose=verbose, shuffle=False,
        callbacks=[keras.callbacks.BackupAndRestore(str(run_dir / "backup")), training.StopOnNonFiniteLoss(),
                   training.EpochLog(str(run_dir / "metrics.jsonl"))],
    )
    wall_seconds = time.perf_counter() - start
    student = distiller.student
    test_errors = training.count_errors(student, mnist.test)
    epoch_rows = artifacts.read_jsonl(run_dir / "metrics.jsonl")
    result = {
        "sigma": config.sigma, "alpha": config.alpha, "seed": config.seed, "epochs": config.epochs,
        "test_errors": test_errors, "test_accuracy": 1.0 - test_errors / len(mnist.test),
        "val_errors": training.count_errors(student, mnist.validation),
        # Summed over epoch rows so that a resumed run counts the time of the epochs it kept.
        "wall_seconds": round(sum(r["epoch_seconds"] for r in epoch_rows) if epoch_rows else wall_seconds, 2),
        "train_size": len(train), "student_parameters": student.count_params(),
        # With sigma > 0 the noise draws depend on the number of replicas (each draws its own).
        "replicas": replicas,
    }
    with artifacts.atomic_path(run_dir / "student.keras") as temporary:
        student.save(temporary + ".keras")
        os.replace(temporary + ".keras", temporary)
    artifacts.write_json(run_dir / "result.json", result)
    return result


def parse_list(text: str, flag: str, kind=float) -> list:
    """`"0,0.4,0.8"` -> `[0.0, 0.4, 0.8]` (`kind` float or int); ValueError naming `--flag` and the text."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values:
        example = "0,0.4,0.8" if kind is float else "0,1,2"
        noun = "numbers" if kind is float else "integers"
        raise ValueError(f"--{flag} must be a comma-separated list of {noun} like {example}, got {text!r}")
    return values


def parse_float_list(text: str, flag: str) -> list[float]:
    return parse_list(text, flag, float)


def parse_int_list(text: str, flag: str) -> list[int]:
    return parse_list(text, flag, int)


def _record_row(path: Path, columns: list[str], row: dict, key_columns=("sigma", "alpha", "seed")) -> None:
    # Rewrite-and-rename rather than append: a kill leaves either the old file or the new one, never half a
    # line, and a pair is never listed twice.
    rows = artifacts.read_csv(path)
    key = tuple(float(row[c]) for c in key_columns)
    rows = [r for r in rows if tuple(float(r[c]) for c in key_columns) != key] + [row]
    artifacts.write_csv(path, rows, columns)


def finished_pairs(output_dir: str) -> set[tuple[float, float, int]]:
    rows = artifacts.read_csv(Path(output_dir) / "sweep.csv")
    return {(float(r["sigma"]), float(r["alpha"]), int(r["seed"])) for r in rows}


def export_runs(base: RunConfig, sigmas: list[float], seeds: list[int], quantizations: list[str],
                mnist: Mnist | None = None) -> list[str]:
    """Writes `student_<quantization>.tflite` beside every finished student of the sweep (earlier calls' runs
    included; files already newer than their `student.keras` are kept). Returns the paths."""
    from tfkd import export  # imported here: only runs that ask for phone files need the converter

    run_dirs = [Path(base.output_dir) / dataclasses.replace(base, sigma=sigma, seed=seed).run_name()
                for seed in seeds for sigma in sigmas]
    run_dirs = [run_dir for run_dir in run_dirs if (run_dir / "student.keras").exists()]
    if not quantizations or not run_dirs:
        return []
    calibration = None
    if "int8" in quantizations:
        calibration = (mnist or load_mnist()).train.images[: export.CALIBRATION_SIZE]
    return [path for run_dir in run_dirs for path in export.export_student_files(run_dir, quantizations, calibration)]


def run_sweep(base: RunConfig, sigmas: list[float], seeds: list[int], verbose: int = 1,
              mnist: Mnist | None = None, tflite: list[str] = (), strategy: tf.distribute.Strategy | None = None,
              shard: tuple[int, int] | None = None) -> list[dict]:
    """Runs every (sigma, seed) not yet in `sweep.csv`, seed-major so that each seed's full curve lands early.

    Returns the results of this call (finished and failed). A failed run is written to `failures.csv` and
    the sweep goes on. `tflite` lists quantizations to export each finished student to (see `export_runs`).
    `strategy` spreads every run over its replicas (`tfkd.distribute.make_strategy`); `shard` `(i, n)` keeps
    only shard `i` of `n` of the (sigma, seed) pairs, for machines that split a sweep between them.
    """
    for sigma in sigmas:
        dataclasses.replace(base, sigma=sigma).validate()
    strategy = strategy or tf.distribute.get_strategy()
    if not distribute.is_chief(strategy):
        # Every worker of a multi-worker run takes every step, but only the chief's files are results. The
        # others write the same layout beside it, so that their view of finished runs matches the chief's.
        resolver = strategy.cluster_resolver
        base = dataclasses.replace(base, output_dir=f"{base.output_dir}.{resolver.task_type}{resolver.task_id}")
    output_dir = check_output_dir(base.output_dir)
    for path in artifacts.remove_stale_temporaries(output_dir):
        logging.info("removed %s, left by an interrupted write", path)
    artifacts.write_json(output_dir / "sweep_config.json",
                         {"base": dataclasses.asdict(base), "sigmas": sigmas, "seeds": seeds,
                          "shard": None if shard is None else list(shard),
                          "replicas": strategy.num_replicas_in_sync})
    pairs = [(sigma, seed) for seed in seeds for sigma in sigmas]
    if shard is not None:
        # Shard the whole grid, then skip finished runs: a shard owns the same pairs however far it got.
        pairs = distribute.shard_pairs(pairs, shard)
    done = finished_pairs(base.output_dir)
    todo = [(sigma, seed) for sigma, seed in pairs if (sigma, base.alpha, seed) not in done]
    outcomes = []
    if not todo:
        logging.info("all %d runs are already in %s", len(pairs), output_dir / "sweep.csv")
        export_runs(base, sigmas, seeds, list(tflite), mnist)
        return outcomes
    mnist = mnist or load_mnist()
    make_deterministic(base.teacher_seed)
    # Outside the strategy: the teacher trains on one device (Keras 3.15 cannot fit a plain model on several
    # workers, keras-team/keras#20585); with cached logits it only runs `predict` once per run anyway.
    teacher, teacher_info = load_or_train_teacher(base, mnist, verbose=verbose)
    for sigma, seed in todo:
        config = dataclasses.replace(base, sigma=sigma, seed=seed)
        logging.info("run %s", config.run_name())
        try:
            result = distill(config, mnist, teacher, verbose=verbose, strategy=strategy)
        except training.NonFiniteLossError as error:
            logging.error("run %s failed: %s", config.run_name(), error)
            failure = {"sigma": sigma, "alpha": base.alpha, "seed": seed, "error": str(error)}
            _record_row(output_dir / "failures.csv", FAILURE_COLUMNS, failure)
            outcomes.append({**failure, "failed": True})
            continue
        row = dict(result, teacher_test_errors=teacher_info["test_errors"],
                   run_dir=str(Path(config.output_dir) / config.run_name()))
        _record_row(output_dir / "sweep.csv", SWEEP_COLUMNS, row)
        outcomes.append(row)
    export_runs(base, sigmas, seeds, list(tflite), mnist)
    return outcomes


def summary(outcomes: list[dict], output_dir: str) -> str:
    """A short console summary: teacher and student test errors, and where the files went."""
    teacher = artifacts.read_json(Path(output_dir) / "teacher.json") or {}
    lines = [f"teacher: {teacher.get('test_errors')} test errors ({output_dir}/teacher.keras)"]
    for row in outcomes:
        if row.get("failed"):
            lines.append(f"sigma {row['sigma']:g} seed {row['seed']}: FAILED - {row['error']}")
        else:
            lines.append(f"student sigma {row['sigma']:g} seed {row['seed']}: {row['test_errors']} test errors, "
                         f"{row['val_errors']} validation errors, {row['wall_seconds']:.0f} s -> {row['run_dir']}")
    lines.append(f"all finished runs: {output_dir}/sweep.csv")
    phone_files = sorted(Path(output_dir).glob("*/student_*.tflite"))
    if phone_files:
        lines.append(f"LiteRT files: student_<quantization>.tflite beside each student.keras (e.g. {phone_files[0]})")
    return "\n".join(lines)


def to_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
