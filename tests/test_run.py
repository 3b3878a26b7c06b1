"""run.py end to end, in subprocesses, on a few hundred images: files, resumption, kills, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--train_size", "256", "--epochs", "1", "--teacher_epochs", "1"]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def start(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def sweep_rows(output_dir):
    with open(output_dir / "sweep.csv") as handle:
        return list(csv.DictReader(handle))


def leftovers(output_dir):
    return [p for p in output_dir.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("smoke")
    result = run("--sigma", "0.8", *QUICK, "--tflite", "none,int8", "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_smoke_run_writes_every_file(smoke):
    output_dir, result = smoke
    run_dir = output_dir / "sigma0.8_alpha0.15_seed0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["sigma"] == 0.8 and config["train_size"] == 256 and config["epochs"] == 1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1 and "loss" in json.loads(lines[0])
    outcome = json.loads((run_dir / "result.json").read_text())
    for key in ("sigma", "alpha", "seed", "test_errors", "test_accuracy", "val_errors", "epochs", "wall_seconds"):
        assert key in outcome
    assert 0 <= outcome["test_errors"] <= 10_000 and 0 <= outcome["val_errors"] <= 10_000
    assert outcome["test_accuracy"] == pytest.approx(1 - outcome["test_errors"] / 10_000)
    assert outcome["wall_seconds"] > 0 and (run_dir / "student.keras").stat().st_size > 1_000_000
    assert json.loads((output_dir / "teacher.json").read_text())["settings"]["epochs"] == 1
    assert [r["sigma"] for r in sweep_rows(output_dir)] == ["0.8"]
    for quantization in ("none", "int8"):
        assert (run_dir / f"student_{quantization}.tflite").stat().st_size > 100_000
    assert "LiteRT files" in result.stdout
    assert "teacher:" in result.stdout and f"{outcome['test_errors']} test errors" in result.stdout
    assert not leftovers(output_dir)


def test_finished_run_is_not_redone(smoke):
    output_dir, _ = smoke
    before = (output_dir / "teacher.keras").stat().st_mtime_ns
    result = run("--sigma", "0.8", *QUICK, "--output_dir", str(output_dir))
    assert result.returncode == 0
    assert "already" in result.stderr
    assert (output_dir / "teacher.keras").stat().st_mtime_ns == before
    assert len(sweep_rows(output_dir)) == 1


def test_corrupt_teacher_is_reported_and_retrained(smoke, tmp_path):
    output_dir = tmp_path / "corrupt"
    output_dir.mkdir()
    for name in ("teacher.keras", "teacher.json"):
        (output_dir / name).write_bytes((smoke[0] / name).read_bytes())
    data = (output_dir / "teacher.keras").read_bytes()
    (output_dir / "teacher.keras").write_bytes(data[: len(data) // 2])
    result = run("--sigma", "0", *QUICK, "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unreadable" in result.stderr and "Traceback" not in result.stderr
    assert (output_dir / "teacher.keras").stat().st_size > len(data) // 2


def test_teacher_with_other_settings_is_not_reused(smoke, tmp_path):
    output_dir = tmp_path / "other"
    output_dir.mkdir()
    for name in ("teacher.keras", "teacher.json"):
        (output_dir / name).write_bytes((smoke[0] / name).read_bytes())
    result = run("--sigma", "0", "--train_size", "256", "--epochs", "1", "--teacher_epochs", "2",
                 "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "other settings" in result.stderr
    assert json.loads((output_dir / "teacher.json").read_text())["settings"]["epochs"] == 2


def test_same_flags_give_the_same_result(smoke, tmp_path):
    import keras

    output_dir = tmp_path / "again"
    result = run("--sigma", "0.8", *QUICK, "--output_dir", str(output_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    name = "sigma0.8_alpha0.15_seed0"
    first = json.loads((smoke[0] / name / "result.json").read_text())
    second = json.loads((output_dir / name / "result.json").read_text())
    assert (first["test_errors"], first["val_errors"]) == (second["test_errors"], second["val_errors"])
    for a, b in zip(keras.saving.load_model(smoke[0] / name / "student.keras").get_weights(),
                    keras.saving.load_model(output_dir / name / "student.keras").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_is_recorded_as_failure_and_sweep_goes_on(tmp_path):
    result = run("--sigmas", "0,0.5", "--learning_rate", "1e12", "--train_size", "256", "--epochs", "1",
                 "--teacher_epochs", "1", "--output_dir", str(tmp_path))
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "loss" in result.stdout
    failures = list(csv.DictReader(open(tmp_path / "failures.csv")))
    assert sorted(f["sigma"] for f in failures) == ["0.0", "0.5"]
    assert not (tmp_path / "sweep.csv").exists() or not sweep_rows(tmp_path)
    assert not (tmp_path / "sigma0_alpha0.15_seed0" / "result.json").exists()


def _wait_for(path_check, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path_check():
            return True
        time.sleep(0.2)
    return False


def test_kill_during_sweep_then_rerun_finishes_each_pair_once(tmp_path):
    args = ["--sigmas", "0,0.5", "--seeds", "0,1", *QUICK, "--output_dir", str(tmp_path)]
    process = start(*args)
    # Kill once the first student result lands, in the middle of the sweep.
    assert _wait_for(lambda: (tmp_path / "sweep.csv").exists(), process), "the sweep never started writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = len(sweep_rows(tmp_path))
    assert finished_before < 4
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    pairs = [(r["sigma"], r["seed"]) for r in sweep_rows(tmp_path)]
    assert sorted(pairs) == sorted({(s, e) for s in ("0.0", "0.5") for e in ("0", "1")})
    assert not leftovers(tmp_path)


def test_killed_single_run_resumes_from_its_last_epoch(tmp_path):
    args = ["--sigma", "0.5", "--train_size", "2048", "--epochs", "4", "--teacher_epochs", "1",
            "--output_dir", str(tmp_path)]
    metrics = tmp_path / "sigma0.5_alpha0.15_seed0" / "metrics.jsonl"
    process = start(*args)
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = metrics.read_text().splitlines()
    assert 1 <= len(kept) < 4, "killed too late to test resumption"
    teacher_time = (tmp_path / "teacher.keras").stat().st_mtime_ns
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    # The epochs finished before the kill were not trained again: their log lines are the original ones.
    assert lines[: len(kept)] == kept
    assert (tmp_path / "teacher.keras").stat().st_mtime_ns == teacher_time
    assert not leftovers(tmp_path)


BAD_FLAGS = [
    (["--sigma", "-1"], "sigma"),
    (["--alpha", "1.5"], "alpha"),
    (["--alpha", "-0.2"], "alpha"),
    (["--batch_size", "0"], "batch_size"),
    (["--epochs", "-3"], "epochs"),
    (["--train_size", "0"], "train_size"),
    (["--train_size", "50001"], "train_size"),
    (["--sigmas", "0,abc"], "sigmas"),
    (["--seeds", "1;2"], "seeds"),
    (["--tflite", "none,int4"], "tflite"),
    (["--shard", "3/3"], "shard"),
    (["--strategy", "tpu"], "strategy"),
]


@pytest.mark.parametrize("flags, name", BAD_FLAGS)
def test_bad_flag_is_one_line_without_traceback(flags, name, tmp_path):
    began = time.time()
    result = run(*flags, "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(message) == 1 and name in message[0] and flags[1] in message[0]
    assert time.time() - began < 60


def test_output_dir_that_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    result = run("--output_dir", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "output_dir" in result.stderr and str(path) in result.stderr


def test_missing_mnist_fails_fast_and_says_how(tmp_path):
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "empty"), TFKD_OFFLINE="1")
    began = time.time()
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--output_dir", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "TFDS_DATA_DIR" in result.stderr
    assert time.time() - began < 60
