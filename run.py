"""tfkd command line: distil a noisy-teacher student on MNIST, or sweep sigma and seeds.

  python run.py --sigma 0.8                                    # the main job
  python run.py --sigmas 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0 --seeds 0,1,2   # the article's table
"""

import os
import sys

from absl import app, flags, logging


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with native stderr muted: its C++ start-up notes (CUDA probes, oneDNN) would bury
    our one-line errors. A Python error still surfaces: it is raised after stderr is restored."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow

            tensorflow.config.list_physical_devices()  # the CUDA probe reports its absence here, muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if os.environ.get("TFKD_VERBOSE_IMPORT") != "1":
    _import_tensorflow_quietly()

from tfkd import distribute, experiment, export  # noqa: E402
from tfkd.data import DataUnavailableError  # noqa: E402
from tfkd.noise import validate_noise  # noqa: E402

_DEFAULTS = experiment.RunConfig()
FLAGS = flags.FLAGS
flags.DEFINE_float("sigma", _DEFAULTS.sigma, "Noise standard deviation (equation 2); 0 is plain logit regression.")
flags.DEFINE_string("sigmas", None, "Comma-separated sigmas for a sweep (overrides --sigma).")
flags.DEFINE_float("alpha", _DEFAULTS.alpha, "Probability that a sample's teacher logits are perturbed.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Student seed: initialisation, data order and noise.")
flags.DEFINE_string("seeds", None, "Comma-separated student seeds for a sweep (overrides --seed).")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Student epochs.")
flags.DEFINE_integer("teacher_epochs", _DEFAULTS.teacher_epochs, "Teacher epochs (if it must be trained).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Mini-batch size T for teacher and students.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Student peak learning rate (cosine decay).")
flags.DEFINE_integer("train_size", _DEFAULTS.train_size, "Use only the first N of the 50,000 training images.")
flags.DEFINE_boolean("cached_logits", _DEFAULTS.cached_logits,
                     "Compute the teacher's logits once and stream them (exact; --nocached_logits runs the "
                     "teacher every step).")
flags.DEFINE_string("output_dir", _DEFAULTS.output_dir, "Where the teacher, runs and sweep.csv go.")
flags.DEFINE_string("strategy", "default",
                    "How each run uses the hardware: default (one device), mirrored (every local GPU), multi_worker "
                    "(every worker in TF_CONFIG; start the same command on each).")
flags.DEFINE_string("shard", None, "i/n: run only shard i of n (0 <= i < n) of the (sigma, seed) pairs, to split a "
                    "sweep across machines; merge them with python -m tfkd.report dir1 dir2 ...")
flags.DEFINE_string("tflite", None, "Comma-separated LiteRT quantizations among none,float16,dynamic,int8: writes "
                    "student_<quantization>.tflite beside each run's student.keras (see tfkd/export.py).")


def _config() -> tuple[experiment.RunConfig, list[float], list[int], list[str], tuple[int, int] | None]:
    try:
        sigmas = experiment.parse_float_list(FLAGS.sigmas, "sigmas") if FLAGS.sigmas is not None else [FLAGS.sigma]
        seeds = experiment.parse_int_list(FLAGS.seeds, "seeds") if FLAGS.seeds is not None else [FLAGS.seed]
        config = experiment.RunConfig(
            sigma=sigmas[0], alpha=FLAGS.alpha, seed=seeds[0], epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, train_size=FLAGS.train_size, cached_logits=FLAGS.cached_logits,
            teacher_epochs=FLAGS.teacher_epochs, output_dir=FLAGS.output_dir)
        config.validate()
        for sigma in sigmas:
            validate_noise(sigma, config.alpha)
        experiment.check_output_dir(config.output_dir)
        try:
            quantizations = export.parse_quantizations(FLAGS.tflite) if FLAGS.tflite is not None else []
        except ValueError as error:
            raise ValueError(f"--tflite={FLAGS.tflite!r}: {error}") from None
        shard = distribute.parse_shard(FLAGS.shard) if FLAGS.shard is not None else None
        if FLAGS.strategy not in distribute.STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(distribute.STRATEGIES)}, got {FLAGS.strategy!r}")
    except ValueError as error:
        raise experiment.ConfigError(str(error)) from None
    return config, sigmas, seeds, quantizations, shard


def _strategy():
    # Before anything else runs on TensorFlow: MultiWorkerMirroredStrategy must be created first.
    try:
        return distribute.make_strategy(FLAGS.strategy)
    except ValueError as error:  # a malformed TF_CONFIG
        raise experiment.ConfigError(str(error)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config, sigmas, seeds, quantizations, shard = _config()
        strategy = _strategy()
        outcomes = experiment.run_sweep(config, sigmas, seeds, tflite=quantizations, strategy=strategy,
                                        shard=shard)
    except (experiment.ConfigError, DataUnavailableError) as error:
        # Bad input: one line that names the value, no traceback; finished runs stay on disk.
        print(f"run.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(experiment.summary(outcomes, config.output_dir))
    if any(row.get("failed") for row in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(main)
