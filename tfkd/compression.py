"""Teacher against student on a phone's terms: parameters, multiply-accumulates, file bytes, LiteRT latency and
test errors of every `.tflite` quantization, written to a Markdown report and a JSON file beside it.

  python -m tfkd.compression --teacher saved_models/teacher.keras \
      --student saved_models/<run>/student.keras --out results/compression.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from absl import logging

from tfkd import artifacts, export
from tfkd.data import DataUnavailableError, Split, load_mnist, make_dataset

FLOAT32_TOLERANCE = 1e-4  # max abs logit difference allowed between the float32 .tflite and Keras
INT8_ACCURACY_TOLERANCE = 0.2  # percentage points of test accuracy int8 may lose against the float32 .tflite
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.extend(_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers holding weights, in order: the depth an image passes through (pooling, ReLU and the like
    excluded)."""
    return [layer for layer in _leaf_layers(model) if layer.weights]


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the Conv and Dense layers, counted from their shapes.

    Conv: `output positions * kernel_h * kernel_w * in_channels / groups * filters`, i.e. output positions times
    the kernel's size; Dense: positions the kernel is applied at (1 for a `[n, features]` input) times
    `in * out`. Bias additions, activations and pooling are not multiply-accumulates and are left out; any other
    layer with weights raises ValueError rather than being counted wrongly.
    """
    total = 0
    for layer in weight_layers(model):
        if not isinstance(layer, (*_CONVOLUTIONS, keras.layers.Dense)):
            raise ValueError(f"count_macs counts Conv and Dense layers only, got layer {layer.name!r} of type "
                             f"{type(layer).__name__}")
        shape = tuple(layer.output.shape)
        if isinstance(layer, _CONVOLUTIONS):
            positions = shape[2:] if layer.data_format == "channels_first" else shape[1:-1]
        else:
            positions = shape[1:-1]
        total += int(np.prod(positions, dtype=np.int64)) * int(np.prod(layer.kernel.shape))
    return total


def tflite_latency(path: str | os.PathLike, image: np.ndarray, runs: int = 500, warmup: int = 50,
                   num_threads: int = 1) -> dict:
    """Batch-1 latency of `invoke()` in the LiteRT interpreter, in milliseconds.

    `image`: one raw image `[1, 28, 28, 1]` in 0..255, copied in once before timing (an input copy is not
    the model's cost). The `warmup` first calls are dropped: they pay for allocation and cold caches.
    """
    interpreter = export.load_interpreter(path, num_threads)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], export.quantize(np.asarray(image, np.float32), detail))
    for _ in range(warmup):
        interpreter.invoke()
    times = np.empty(runs)
    for index in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times[index] = time.perf_counter() - start
    times *= 1000.0
    return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
            "p90_ms": float(np.percentile(times, 90))}


def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def _environment(num_threads: int) -> dict:
    versions = {}
    for package in ("tensorflow", "keras", "ai-edge-litert", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"code_version": _code_version(), "versions": versions, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "num_threads": num_threads,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def measure_model(path: str | os.PathLike, name: str, test: Split, calibration: np.ndarray, tflite_dir: str,
                  runs: int, warmup: int, num_threads: int) -> dict:
    """Everything the report says of one `.keras` file: its model, and each quantization's `.tflite` file."""
    model = export.load_for_export(path)
    keras_logits = np.asarray(model.predict(make_dataset(test, 1000), verbose=0), np.float32)  # (n, 10)
    keras_predictions = np.argmax(keras_logits, axis=-1)
    result = {
        "path": str(path), "sha256": _sha256(path), "model_name": model.name,
        "weight_layers": [f"{layer.name} ({type(layer).__name__})" for layer in weight_layers(model)],
        "parameters": int(model.count_params()), "macs_per_image": count_macs(model),
        "keras_bytes": os.path.getsize(path), "keras_test_errors": int(np.sum(keras_predictions != test.labels)),
        "tflite": {},
    }
    for quantization in export.QUANTIZATIONS:
        file = export.export_tflite(model, os.path.join(tflite_dir, f"{name}_{quantization}.tflite"), quantization,
                                    representative_data=calibration if quantization == "int8" else None)
        logits = export.tflite_predict(file, test.images, num_threads)  # (n, 10)
        predictions = np.argmax(logits, axis=-1)
        errors = int(np.sum(predictions != test.labels))
        info = export.describe_tflite(file)
        result["tflite"][quantization] = {
            "bytes": info["bytes"], "test_errors": errors, "test_error_percent": 100.0 * errors / len(test),
            "max_abs_diff_vs_keras": float(np.max(np.abs(logits - keras_logits))),
            "argmax_agreement_vs_keras": float(np.mean(predictions == keras_predictions)),
            "latency": tflite_latency(file, test.images[:1], runs, warmup, num_threads),
            "input": info["input"], "output": info["output"], "operators": info["operators"],
        }
        logging.info("%s %s: %d bytes, %d test errors, %.3f ms median", name, quantization, info["bytes"],
                     errors, result["tflite"][quantization]["latency"]["median_ms"])
    return result


def compare(teacher_path: str | os.PathLike, student_path: str | os.PathLike, test: Split,
            calibration: np.ndarray, runs: int = 500, warmup: int = 50, num_threads: int = 1,
            tflite_dir: str | None = None) -> dict:
    """The report's content as JSON-ready data: `{"teacher": ..., "student": ..., "checks": ..., "settings": ...}`.

    `test`: the images (uint8 `[n, 28, 28, 1]`) and labels every variant is scored on; `calibration`: raw
    images for int8. The `.tflite` files go to `tflite_dir`, or to a temporary folder removed afterwards.
    """
    with tempfile.TemporaryDirectory() as scratch:
        directory = tflite_dir or scratch
        os.makedirs(directory, exist_ok=True)
        models = {name: measure_model(path, name, test, calibration, directory, runs, warmup, num_threads)
                  for name, path in (("teacher", teacher_path), ("student", student_path))}
    checks = {}
    for name, result in models.items():
        float32, int8 = result["tflite"]["none"], result["tflite"]["int8"]
        # Positive: int8 is more accurate than float32 on this test set; only a drop beyond the tolerance fails.
        change = (float32["test_errors"] - int8["test_errors"]) * 100.0 / len(test)
        checks[name] = {
            "float32_max_abs_diff": float32["max_abs_diff_vs_keras"],
            "float32_within_tolerance": float32["max_abs_diff_vs_keras"] <= FLOAT32_TOLERANCE,
            "int8_accuracy_change_pp": change, "int8_within_tolerance": change >= -INT8_ACCURACY_TOLERANCE,
            "builtin_ops_only": all(not op.startswith("CUSTOM") for variant in result["tflite"].values()
                                    for op in variant["operators"]),
        }
    settings = {"test_images": len(test), "calibration_images": len(calibration), "runs": runs, "warmup": warmup,
                "float32_tolerance": FLOAT32_TOLERANCE, "int8_accuracy_tolerance_pp": INT8_ACCURACY_TOLERANCE,
                **_environment(num_threads)}
    return {**models, "checks": checks, "settings": settings}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def findings(report: dict) -> list[str]:
    """Plain sentences comparing student and teacher, saying where the student is *not* smaller or faster."""
    teacher, student = report["teacher"], report["student"]
    lines = []
    if student["parameters"] > teacher["parameters"]:
        lines.append(f"**Not smaller in parameters or storage.** The student has {student['parameters']:,} "
                     f"parameters, {_ratio(student['parameters'], teacher['parameters'])} the teacher's "
                     f"{teacher['parameters']:,}: dense layers on raw pixels hold more weights than LeNet's "
                     "shared convolution kernels.")
    else:
        lines.append(f"The student has {student['parameters']:,} parameters, "
                     f"{_ratio(teacher['parameters'], student['parameters'])} fewer than the teacher's "
                     f"{teacher['parameters']:,}.")
    bigger = [q for q in export.QUANTIZATIONS if student["tflite"][q]["bytes"] > teacher["tflite"][q]["bytes"]]
    if bigger:
        lines.append("Its `.tflite` file is larger than the teacher's at the same quantization for: "
                     + ", ".join(f"{q} ({student['tflite'][q]['bytes']:,} vs {teacher['tflite'][q]['bytes']:,} "
                                 "bytes)" for q in bigger) + ".")
    smallest = min(export.QUANTIZATIONS, key=lambda q: student["tflite"][q]["bytes"])
    teacher_float = teacher["tflite"]["none"]["bytes"]
    relation = "smaller" if student["tflite"][smallest]["bytes"] < teacher_float else "not smaller"
    lines.append(f"The student's smallest file ({smallest}, {student['tflite'][smallest]['bytes']:,} bytes) is "
                 f"{relation} than the teacher's float32 file ({teacher_float:,} bytes).")
    fewer = student["macs_per_image"] < teacher["macs_per_image"]
    lines.append(f"{'**Less compute.**' if fewer else '**Not less compute.**'} The student needs "
                 f"{student['macs_per_image']:,} multiply-accumulates per image against the teacher's "
                 f"{teacher['macs_per_image']:,} ("
                 + (f"{_ratio(teacher['macs_per_image'], student['macs_per_image'])} fewer" if fewer else
                    f"{_ratio(student['macs_per_image'], teacher['macs_per_image'])} as many")
                 + f"), through {len(student['weight_layers'])} layers with weights instead of "
                 f"{len(teacher['weight_layers'])}, all of them matrix products.")
    slower = []
    for quantization in export.QUANTIZATIONS:
        s = student["tflite"][quantization]["latency"]["median_ms"]
        t = teacher["tflite"][quantization]["latency"]["median_ms"]
        verdict = f"faster ({_ratio(t, s)} less time)" if s < t else f"**not faster** ({_ratio(s, t)} the time)"
        lines.append(f"Latency, {quantization}: the student takes {s:.3f} ms, the teacher {t:.3f} ms: {verdict}.")
        if s >= t:
            slower.append(quantization)
    if fewer and slower:
        lines.append(f"Fewer multiply-accumulates did not mean less time for {', '.join(slower)}: at batch 1 each "
                     "dense weight is used once per image, so the student's layers likely wait on reading their "
                     "weights from memory rather than on arithmetic, and its weights are the larger (a likely "
                     "reason, not measured here).")
    difference = student["keras_test_errors"] - teacher["keras_test_errors"]
    lines.append(f"Accuracy: the student makes {student['keras_test_errors']} test errors, the teacher "
                 f"{teacher['keras_test_errors']} ({'+' if difference >= 0 else ''}{difference}).")
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def render_markdown(report: dict, command: str) -> str:
    """The Markdown report of `compare`'s output; `command` is the command line that produced it."""
    settings, teacher, student = report["settings"], report["teacher"], report["student"]
    versions = ", ".join(f"{package} {version}" for package, version in settings["versions"].items())
    n = settings["test_images"]
    lines = [
        "# Teacher vs student on a phone: size, compute, LiteRT latency and accuracy",
        "",
        f"Made by `{command}` on {settings['date']}, code {settings['code_version']}; {versions}; "
        f"{settings['platform']} ({settings['processor']}, {settings['cpu_count']} CPUs).",
        "",
        f"- teacher: `{teacher['path']}` (sha256 {teacher['sha256'][:12]})",
        f"- student: `{student['path']}` (sha256 {student['sha256'][:12]})",
        "",
        "## Models",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| layers with weights | {', '.join(teacher['weight_layers'])} | {', '.join(student['weight_layers'])} |",
        f"| parameters | {teacher['parameters']:,} | {student['parameters']:,} |",
        f"| multiply-accumulates per image | {teacher['macs_per_image']:,} | {student['macs_per_image']:,} |",
        f"| `.keras` bytes | {teacher['keras_bytes']:,} | {student['keras_bytes']:,} |",
        f"| Keras test errors (of {n:,}) | {teacher['keras_test_errors']} | {student['keras_test_errors']} |",
        "",
        "## LiteRT files",
        "",
        f"Latency: median (p10-p90) of {settings['runs']} batch-1 `invoke()` calls after {settings['warmup']} "
        f"warm-up calls, num_threads={settings['num_threads']}. Errors: of the {n:,} test images, one image per "
        "`invoke()`.",
        "",
        "| model | quantization | `.tflite` bytes | latency ms | test errors | error % | max abs logit diff vs "
        "Keras | argmax agreement with Keras |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("teacher", "student"):
        for quantization, variant in report[name]["tflite"].items():
            latency = variant["latency"]
            lines.append(
                f"| {name} | {quantization} | {variant['bytes']:,} | {latency['median_ms']:.3f} "
                f"({latency['p10_ms']:.3f}-{latency['p90_ms']:.3f}) | {variant['test_errors']} | "
                f"{variant['test_error_percent']:.2f} | {variant['max_abs_diff_vs_keras']:.2e} | "
                f"{100 * variant['argmax_agreement_vs_keras']:.2f}% |")
    lines += ["", "## Checks", ""]
    for name in ("teacher", "student"):
        check = report["checks"][name]
        int8_input = report[name]["tflite"]["int8"]["input"]
        lines += [
            f"- {name}: float32 `.tflite` vs Keras, max abs logit difference {check['float32_max_abs_diff']:.2e} "
            f"over {n:,} images; within {settings['float32_tolerance']:g}: {_yes(check['float32_within_tolerance'])}.",
            f"- {name}: int8 changes test accuracy by {check['int8_accuracy_change_pp']:+.2f} percentage points "
            f"against the float32 `.tflite`; no worse than -{settings['int8_accuracy_tolerance_pp']:g}: "
            f"{_yes(check['int8_within_tolerance'])}.",
            f"- {name}: builtin LiteRT ops only, no Flex or custom ops: {_yes(check['builtin_ops_only'])}. int8 input "
            f"`q = round(pixel / {int8_input['scale']:g}) + ({int8_input['zero_point']})`.",
        ]
    lines += ["", "## Where the student is smaller, and where it is not", ""]
    lines += [f"- {line}" for line in findings(report)]
    lines += [
        "", "## How it was measured", "",
        "- Every `.tflite` file takes raw pixels `[1, 28, 28, 1]` in 0..255 and returns logits `[1, 10]`; the "
        "division by 255 is inside the file (`tfkd.export`). Keras logits come from the same images divided by 255.",
        f"- Latency: the LiteRT interpreter of `ai-edge-litert` (its default CPU path, with the XNNPACK delegate), "
        f"num_threads={settings['num_threads']}, all files in one process on the same machine; only `invoke()` is "
        "timed, the input is copied in before. The numbers are this machine's: compare the ratios, not the "
        "milliseconds, with a phone. A machine shared with other work makes the p90 wide.",
        "- `.keras` bytes are those of the files given, including any optimizer state saved with the model; the "
        "`.tflite` files hold the inference graph and weights only.",
        "- Multiply-accumulates are counted from the layer shapes (`tfkd.compression.count_macs`): Conv "
        "`out_h * out_w * k_h * k_w * c_in * c_out`, Dense `in * out`; biases, ReLU and pooling are not counted.",
        f"- int8 is calibrated on the first {settings['calibration_images']} MNIST training images; float16 stores "
        "float16 weights; dynamic stores int8 weights and quantizes activations on the fly.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m tfkd.compression", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the teacher's .keras file")
    parser.add_argument("--student", required=True, help="the student's .keras file (or a Distiller's)")
    parser.add_argument("--out", default="results/compression.md", help="Markdown report; the JSON goes beside it")
    parser.add_argument("--runs", type=int, default=500, help="timed invoke() calls per file")
    parser.add_argument("--warmup", type=int, default=50, help="untimed invoke() calls before timing")
    parser.add_argument("--num_threads", type=int, default=1, help="LiteRT interpreter threads")
    parser.add_argument("--calibration_size", type=int, default=export.CALIBRATION_SIZE,
                        help="MNIST training images that calibrate int8")
    parser.add_argument("--test_size", type=int, default=None, help="score only the first N test images "
                                                                    "(default: all 10,000)")
    parser.add_argument("--tflite_dir", default=None, help="keep the .tflite files here (default: discarded)")
    args = parser.parse_args(argv)
    try:
        for name in ("runs", "warmup", "num_threads", "calibration_size", "test_size"):
            value = getattr(args, name)
            smallest = 0 if name == "warmup" else 1
            if value is not None and value < smallest:
                raise ValueError(f"--{name} must be an integer >= {smallest}, got {value}")
        mnist = load_mnist()
        test = mnist.test.take(args.test_size) if args.test_size else mnist.test
        report = compare(args.teacher, args.student, test, mnist.train.images[:args.calibration_size],
                         runs=args.runs, warmup=args.warmup, num_threads=args.num_threads,
                         tflite_dir=args.tflite_dir)
    except (ValueError, DataUnavailableError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    command = " ".join(["python -m tfkd.compression", *map(shlex.quote, argv)])
    report["settings"]["command"] = command
    markdown = render_markdown(report, command)
    artifacts.write_text(args.out, markdown)
    artifacts.write_json(Path(args.out).with_suffix(".json"), report)
    print(markdown)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    sys.exit(main())
