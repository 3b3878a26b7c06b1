"""Does the noisy teacher really simulate several teachers? The comparison, resumable like the sweep.

  python -m tfkd.beyond --output_dir saved_models/mnist_sweep --seeds 0,1,2,3,4 --results_dir results

Methods (all in the same harness: student, data, epochs, seeds, SGD schedule):
  logit_regression       equation 1 on one teacher (the article's baseline; sigma 0)
  noisy_teacher          equations 1-2 at `--noisy_sigma` (the article's best, 0.8)
  multi_teacher_mean     equation 1 on the mean logits of K teachers trained from different seeds
  multi_teacher_random   equation 1 on one of the K teachers' logits, drawn per sample and step
  hinton_kd              soft targets at temperature T (Hinton et al. 2015), hard-label weight w

Teacher j is trained with teacher seed j (teacher 0 is the sweep's own teacher when `--output_dir` is the
sweep's). Runs of logit_regression and noisy_teacher are the sweep's runs of sigma 0 and `--noisy_sigma`, so a
finished sweep already holds them. Each finished (method, seed) is a row of `<output_dir>/beyond.csv`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

from absl import logging

from tfkd import artifacts, experiment, training
from tfkd.data import DataUnavailableError, load_mnist
from tfkd.methods import MultiTeacherDistiller, SoftTargetDistiller, stack_teachers
from tfkd.report import code_version, paired_test

METHODS = ("logit_regression", "noisy_teacher", "multi_teacher_mean", "multi_teacher_random", "hinton_kd")
COLUMNS = ["method", "seed", "test_errors", "val_errors", "student_seconds", "teachers",
           "teacher_seconds", "train_seconds_including_teachers", "run_dir"]


@dataclasses.dataclass
class BeyondConfig:
    """The comparison's own settings; everything else comes from `experiment.RunConfig`'s defaults."""

    teachers: int = 5
    noisy_sigma: float = 0.8
    temperature: float = 4.0
    hard_weight: float = 0.5  # as keras.distillation.Distiller's default student_loss_weight
    # Soft targets are a cross-entropy, not an L2 on raw logits: they take the teacher's learning rate.
    hinton_learning_rate: float = 0.05


def teacher_name(index: int) -> str:
    return "teacher" if index == 0 else f"teacher_seed{index}"


def load_teachers(base: experiment.RunConfig, mnist, count: int, verbose: int = 1) -> list[tuple]:
    """K teachers `(model, info)`, teacher j trained (or reused) with teacher seed j."""
    return [experiment.load_or_train_teacher(dataclasses.replace(base, teacher_seed=index), mnist, verbose,
                                             name=teacher_name(index)) for index in range(count)]


def _teacher_seconds(infos: list[dict]) -> float:
    return sum(info.get("train_seconds") or info.get("train_seconds_this_process") or 0.0 for info in infos)


def run_method(method: str, base: experiment.RunConfig, beyond: BeyondConfig, seed: int, mnist, teachers,
               verbose: int = 1) -> dict:
    """Distils one student with `method` and returns its row of `beyond.csv`."""
    config = dataclasses.replace(base, seed=seed)
    models, infos = [t[0] for t in teachers], [t[1] for t in teachers]
    if method in ("logit_regression", "noisy_teacher"):
        config = dataclasses.replace(config, sigma=0.0 if method == "logit_regression" else beyond.noisy_sigma)
        result = experiment.distill(config, mnist, models[0], verbose)
        run_name, used = config.run_name(), infos[:1]
    elif method in ("multi_teacher_mean", "multi_teacher_random"):
        rule = method.rsplit("_", 1)[1]
        run_name = f"{method}_k{beyond.teachers}_seed{seed}"
        result = experiment.distill(
            config, mnist, stack_teachers(models), verbose, run_name=run_name,
            make_distiller=lambda student, teacher, c: MultiTeacherDistiller(student, teacher, rule=rule, seed=c.seed),
            extra_settings={"method": method, "teachers": beyond.teachers})
        used = infos
    elif method == "hinton_kd":
        config = dataclasses.replace(config, learning_rate=beyond.hinton_learning_rate)
        run_name = f"hinton_kd_t{beyond.temperature:g}_w{beyond.hard_weight:g}_seed{seed}"
        result = experiment.distill(
            config, mnist, models[0], verbose, run_name=run_name,
            make_distiller=lambda student, teacher, c: SoftTargetDistiller(
                student, teacher, temperature=beyond.temperature, hard_weight=beyond.hard_weight, seed=c.seed),
            extra_settings={"method": method, "temperature": beyond.temperature, "hard_weight": beyond.hard_weight})
        used = infos[:1]
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    teacher_seconds = _teacher_seconds(used)
    return {"method": method, "seed": seed, "test_errors": result["test_errors"], "val_errors": result["val_errors"],
            "student_seconds": result["wall_seconds"], "teachers": len(used),
            "teacher_seconds": round(teacher_seconds, 1),
            "train_seconds_including_teachers": round(result["wall_seconds"] + teacher_seconds, 1),
            "run_dir": str(Path(config.output_dir) / run_name)}


def run_comparison(base: experiment.RunConfig, beyond: BeyondConfig, methods: list[str], seeds: list[int],
                   verbose: int = 1, mnist=None) -> list[dict]:
    """Every (method, seed) not yet in `beyond.csv`, seed-major; failures go to `beyond_failures.csv`."""
    for method in methods:
        if method not in METHODS:
            raise experiment.ConfigError(f"--methods must be among {', '.join(METHODS)}, got {method!r}")
    output_dir = experiment.check_output_dir(base.output_dir)
    artifacts.remove_stale_temporaries(output_dir)
    path = output_dir / "beyond.csv"
    done = {(r["method"], int(r["seed"])) for r in artifacts.read_csv(path)}
    todo = [(method, seed) for seed in seeds for method in methods if (method, seed) not in done]
    if not todo:
        return []
    mnist = mnist or load_mnist()
    count = beyond.teachers if any(m.startswith("multi_teacher") for m, _ in todo) else 1
    teachers = load_teachers(base, mnist, count, verbose)
    outcomes = []
    for method, seed in todo:
        logging.info("comparison run %s seed %d", method, seed)
        try:
            row = run_method(method, base, beyond, seed, mnist, teachers, verbose)
        except training.NonFiniteLossError as error:
            logging.error("%s seed %d failed: %s", method, seed, error)
            experiment._record_row(output_dir / "beyond_failures.csv", ["method", "seed", "error"],
                                   {"method": method, "seed": seed, "error": str(error)}, key_columns=("seed",))
            continue
        rows = [r for r in artifacts.read_csv(path) if (r["method"], int(r["seed"])) != (method, seed)]
        artifacts.write_csv(path, rows + [row], COLUMNS)
        outcomes.append(row)
    return outcomes


def _read_rows(output_dir: str) -> list[dict]:
    rows = artifacts.read_csv(Path(output_dir) / "beyond.csv")
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in ("test_errors", "val_errors", "teachers"):
            row[key] = int(row[key])
        for key in ("student_seconds", "teacher_seconds", "train_seconds_including_teachers"):
            row[key] = float(row[key])
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    by_method = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in METHODS}
    baseline = {seed: r["test_errors"] for seed, r in by_method["logit_regression"].items()}
    table = []
    for method in METHODS:
        runs = by_method[method]
        if not runs:
            continue
        errors = [r["test_errors"] for r in runs.values()]
        entry = {"method": method, "seeds": len(runs), "mean": statistics.mean(errors),
                 "std": statistics.stdev(errors) if len(errors) > 1 else math.nan,
                 "compute_s": statistics.mean(r["train_seconds_including_teachers"] for r in runs.values()),
                 "teachers": max(r["teachers"] for r in runs.values())}
        if method != "logit_regression" and baseline:
            entry.update(paired_test({s: r["test_errors"] for s, r in runs.items()}, baseline))
        table.append(entry)
    return table


def _fmt(value, spec=".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def write_report(output_dir: str, results_dir: str, command: str, beyond: BeyondConfig) -> list[dict]:
    rows = _read_rows(output_dir)
    if not rows:
        raise experiment.ConfigError(f"no finished comparison runs in {output_dir!r}/beyond.csv")
    table = summarise(rows)
    results = Path(results_dir)
    artifacts.write_csv(results / "beyond.csv", rows, COLUMNS[:-1])
    short = [f"{e['method']}: {e['seeds']} seeds" for e in table if e["seeds"] < 5]
    missing = [m for m in METHODS if m not in {e["method"] for e in table}]
    lines = ["# Beyond the paper: noise against several real teachers (MNIST)", ""]
    if short or missing:
        lines += [f"**PARTIAL**: fewer than 5 seeds for {', '.join(short + [m + ': 0 seeds' for m in missing])}.", ""]
    lines += [
        f"Generated by `{command}` from code version `{code_version()}`. K = {beyond.teachers} teachers (LeNet, "
        f"teacher seeds 0..{beyond.teachers - 1}); noisy teacher sigma {beyond.noisy_sigma:g}, alpha 0.15; "
        f"Hinton KD T = {beyond.temperature:g}, hard-label weight {beyond.hard_weight:g}, learning rate "
        f"{beyond.hinton_learning_rate:g}. Same student, data, epochs, schedule and seeds otherwise.", "",
        "Compute = the student's training seconds plus the training seconds of every teacher it needs (a method "
        "with K teachers pays K trainings), measured on this shared 2-core machine. Paired test: two-sided paired "
        "t-test of test errors against logit regression over the seeds both have.", "",
        "| method | teachers | seeds | test errors mean +- std | diff vs logit regression | p | compute (s) |",
        "|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['method']} | {e['teachers']} | {e['seeds']} | {_fmt(e['mean'])} +- {_fmt(e['std'])} | "
                     f"{_fmt(e.get('mean_difference'), '+.1f')} | {_fmt(e.get('p_value'), '.3f')} | "
                     f"{e['compute_s']:.0f} |")
    lines += ["", "![test errors against compute](beyond.png)", ""]
    artifacts.write_text(results / "beyond.md", "\n".join(lines))
    _plot(rows, table, results / "beyond.png")
    return table


def _plot(rows, table, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = dict(zip(METHODS, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    for entry in table:
        method = entry["method"]
        runs = [r for r in rows if r["method"] == method]
        axes.scatter([r["train_seconds_including_teachers"] / 60 for r in runs], [r["test_errors"] for r in runs],
                     color=colours[method], alpha=0.4, s=18)
        axes.errorbar(entry["compute_s"] / 60, entry["mean"], yerr=0 if math.isnan(entry["std"]) else entry["std"],
                      color=colours[method], marker="o", markersize=8, capsize=4,
                      label=f"{method} ({entry['teachers']} teacher{'s' if entry['teachers'] > 1 else ''})")
    axes.set_xlabel("compute: student + teachers' training (minutes, this 2-core machine)")
    axes.set_ylabel("MNIST test errors (of 10,000)")
    axes.set_title("Test errors against compute (points: seeds; markers: mean +- std)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with artifacts.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfkd.beyond", description=__doc__.splitlines()[0])
    defaults, beyond_defaults = experiment.RunConfig(), BeyondConfig()
    parser.add_argument("--output_dir", default="saved_models/mnist_sweep")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--teachers", type=int, default=beyond_defaults.teachers)
    parser.add_argument("--noisy_sigma", type=float, default=beyond_defaults.noisy_sigma)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--teacher_epochs", type=int, default=defaults.teacher_epochs)
    parser.add_argument("--train_size", type=int, default=defaults.train_size)
    parser.add_argument("--report_only", action="store_true", help="only write the report from beyond.csv")
    args = parser.parse_args(argv)
    command = "python -m tfkd.beyond " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        if args.teachers < 1:
            raise experiment.ConfigError(f"--teachers must be >= 1, got {args.teachers}")
        beyond = dataclasses.replace(beyond_defaults, teachers=args.teachers, noisy_sigma=args.noisy_sigma)
        base = experiment.RunConfig(epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                                    train_size=args.train_size, output_dir=args.output_dir)
        try:
            base.validate()
        except ValueError as error:
            raise experiment.ConfigError(str(error)) from None
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        try:
            seeds = experiment.parse_int_list(args.seeds, "seeds")
        except ValueError as error:
            raise experiment.ConfigError(str(error)) from None
        if not args.report_only:
            run_comparison(base, beyond, methods, seeds)
        write_report(args.output_dir, args.results_dir, command, beyond)
    except (experiment.ConfigError, DataUnavailableError) as error:
        print(f"tfkd.beyond: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.results_dir}/beyond.md, beyond.csv and beyond.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
