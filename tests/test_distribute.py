"""tf.distribute: one device vs two replicas (MirroredStrategy on 2 logical CPUs, and two local workers of a
MultiWorkerMirroredStrategy), the noise per replica, sweep shards and merging their sweep.csv files."""

import json
import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tfkd import artifacts
from tfkd.distribute import STRATEGIES, is_chief, make_strategy, merge_sweeps, parse_shard, shard_pairs

ROOT = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).with_name("distribute_checks.py")
SIGMAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
GRID = [(sigma, seed) for seed in range(3) for sigma in SIGMAS]


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, "the check printed no RESULT line"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def mirrored():
    completed = subprocess.run([sys.executable, str(CHECKS), "mirrored"], cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return _result(completed.stdout)


def _assert_same_run(one_device: dict, distributed: dict) -> None:
    assert one_device["replicas"] == 1 and distributed["replicas"] == 2
    np.testing.assert_allclose(distributed["loss"], one_device["loss"], rtol=1e-5)
    np.testing.assert_allclose(distributed["accuracy"], one_device["accuracy"], rtol=1e-6)
    assert distributed["eval_loss"] == pytest.approx(one_device["eval_loss"], rel=1e-5)
    assert distributed["eval_accuracy"] == pytest.approx(one_device["eval_accuracy"], rel=1e-6)
    assert len(distributed["weights"]) == len(one_device["weights"]) == 4
    for a, b in zip(distributed["weights"], one_device["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scenario", ["online", "cached"])
def test_mirrored_two_replicas_match_one_device(mirrored, scenario):
    # Uneven last batches (13 + 12 rows, and 1 + 0) and a clipping optimizer: T must be the summed rows, and the
    # clipping must act on the summed gradient, for the two replicas to reproduce one device.
    _assert_same_run(mirrored[scenario]["single"], mirrored[scenario]["mirrored"])


def test_noise_covers_alpha_of_the_global_batch_and_differs_per_replica(mirrored):
    noise = mirrored["noise"]
    assert noise["replicas"] == 2 and noise["rows"] == [2000, 2000]
    # 4000 rows at alpha 0.15: the standard deviation of the fraction is 0.0056.
    assert noise["perturbed_fraction"] == pytest.approx(0.15, abs=0.02)
    assert all(0.12 <= f <= 0.18 for f in noise["perturbed_fraction_per_replica"])
    # Same logits on both replicas: only independent draws make their targets differ.
    assert not noise["same_rows_perturbed"] and not noise["same_targets"]
    assert noise["seed_pairs"][0] != noise["seed_pairs"][1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_multi_worker_two_workers_match_one_device(mirrored):
    hosts = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen([sys.executable, str(CHECKS), "worker"], cwd=ROOT, env=_env(TF_CONFIG=config),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=180)
            assert worker.returncode == 0, stderr[-3000:]
            outputs.append(_result(stdout))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for output in outputs:
        _assert_same_run(mirrored["cached"]["single"], output["cached"])


def test_shards_cover_every_pair_exactly_once():
    for count in range(1, 8):
        shards = [shard_pairs(GRID, f"{index}/{count}") for index in range(count)]
        flat = [pair for shard in shards for pair in shard]
        assert sorted(flat) == sorted(GRID) and len(flat) == len(set(flat)), count
        sizes = [len(shard) for shard in shards]
        assert max(sizes) - min(sizes) <= 1, (count, sizes)


def test_shards_are_deterministic_and_ignore_order_and_duplicates():
    shuffled = GRID[:]
    random.Random(0).shuffle(shuffled)
    for count in (2, 3, 5):
        for index in range(count):
            first = shard_pairs(GRID, f"{index}/{count}")
            assert first == shard_pairs(GRID, (index, count))
            assert set(shard_pairs(shuffled + shuffled[:4], f"{index}/{count}")) == set(first)
            # This shard's pairs, in the order they were given (seed-major here).
            assert first == [pair for pair in GRID if pair in set(first)]
    # Pinned: shard 0 of 4 takes every 4th pair of the seed-major grid.
    assert shard_pairs(GRID, "0/4")[:3] == [(0.0, 0), (0.4, 0), (0.8, 0)]


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/4", (3, 4)), (" 2 / 7 ", (2, 7))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "5/4", "-1/4", "1/0", "0/0", "a/b", "1", "1/2/3", "", "1.0/2"])
def test_parse_shard_rejects_malformed_or_out_of_range(text):
    with pytest.raises(ValueError, match="shard") as error:
        parse_shard(text)
    assert repr(text) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), (-1, 3), ("0", 2), (1,), "x"])
def test_shard_pairs_rejects_bad_shards(shard):
    with pytest.raises(ValueError, match="shard"):
        shard_pairs(GRID, shard)


def test_make_strategy_rejects_unknown_names_in_one_line():
    with pytest.raises(ValueError) as error:
        make_strategy("tpu")
    message = str(error.value)
    assert "'tpu'" in message and all(name in message for name in STRATEGIES) and "\n" not in message
    with pytest.raises(ValueError, match="devices.*'default'"):
        make_strategy("default", devices=["/cpu:0"])


def test_make_strategy_default_is_one_device():
    import tensorflow as tf

    strategy = make_strategy("default")
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG must be JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is out of range")])
def test_make_strategy_rejects_malformed_tf_config(monkeypatch, tf_config, message):
    # Checked before TensorFlow sees it: no strategy is created, so this is safe in a shared process.
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        make_strategy("multi_worker")


def _cluster(task_type, task_id, jobs):
    spec = SimpleNamespace(as_dict=lambda: {job: ["host:1"] for job in jobs})
    return SimpleNamespace(cluster_resolver=SimpleNamespace(task_type=task_type, task_id=task_id,
                                                            cluster_spec=lambda: spec))


@pytest.mark.parametrize("task_type, task_id, jobs, chief", [
    (None, None, [], True), ("worker", 0, ["worker"], True), ("worker", 1, ["worker"], False),
    ("chief", 0, ["chief", "worker"], True), ("worker", 0, ["chief", "worker"], False)])
def test_is_chief_follows_tf_config_roles(task_type, task_id, jobs, chief):
    assert is_chief(_cluster(task_type, task_id, jobs)) is chief


def test_is_chief_without_a_cluster():
    assert is_chief(make_strategy("default"))


def _sweep(path: Path, rows: list[tuple]) -> Path:
    columns = ["sigma", "alpha", "seed", "test_errors", "run_dir"]
    artifacts.write_csv(path, [dict(zip(columns, row)) for row in rows], columns)
    return path


def test_merge_sweeps_deduplicates_by_sigma_alpha_seed(tmp_path, caplog):
    first = _sweep(tmp_path / "a" / "sweep.csv", [(0.8, 0.15, 0, 90, "a/x"), (0.0, 0.15, 0, 97, "a/y")])
    second = _sweep(tmp_path / "b" / "sweep.csv", [("0.80", "0.150", 0, 88, "b/x"), (0.8, 0.15, 1, 86, "b/z"),
                                                    (0.8, 0.3, 0, 85, "b/w")])
    with caplog.at_level(logging.WARNING):
        rows = merge_sweeps([first, tmp_path / "b"])  # a file, and a directory holding one
    keys = [(float(r["sigma"]), float(r["alpha"]), int(r["seed"])) for r in rows]
    assert keys == [(0.0, 0.15, 0), (0.8, 0.15, 0), (0.8, 0.15, 1), (0.8, 0.3, 0)]
    # The later file wins, as a rerun replaces its row in sweep.csv.
    assert rows[1]["test_errors"] == "88" and rows[1]["run_dir"] == "b/x"
    assert "90 test errors" in caplog.text and "88 in" in caplog.text  # the disagreement is reported
    assert merge_sweeps([first]) == sorted(artifacts.read_csv(first), key=lambda r: float(r["sigma"]))


def test_merge_sweeps_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="sweep.csv.*nowhere"):
        merge_sweeps([tmp_path / "nowhere"])
