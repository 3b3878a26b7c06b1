"""Scaling out: a `tf.distribute` strategy by name, and a sweep split into shards that machines run apart.

Two ways to use more hardware, for two different needs:
  - one run on several GPUs or machines (data parallel): `make_strategy("mirrored")` or `"multi_worker"`, then
    build and compile the `Distiller` inside `strategy.scope()`. The Distiller keeps equation 1 over the global
    batch, so each step is the one a single device takes on the same batch; with noise, each replica draws its
    own (see `tfkd.distiller`).
  - many independent runs (a sigma x seed sweep): `--shard i/n` on machine `i` of `n` runs a fixed 1/n of the
    (sigma, seed) pairs (`shard_pairs`), and `merge_sweeps` joins the machines' `sweep.csv` files for the report.
For the article's small models the second scales far better: it needs no communication at all.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from pathlib import Path
from typing import Iterable

import tensorflow as tf
from absl import logging

from tfkd import artifacts

STRATEGIES = ("default", "mirrored", "multi_worker")
_SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def _check_tf_config(text: str) -> dict:
    """The parsed `TF_CONFIG`; ValueError in one line when it is not the JSON TensorFlow documents."""
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG must be JSON like {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                         f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}, got {text!r} ({error})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(isinstance(v, list) and v for v in cluster.values()):
        raise ValueError(f"TF_CONFIG must name the cluster's hosts under \"cluster\", got {text!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int):
        raise ValueError(f"TF_CONFIG must give this process's \"task\" as a type of the cluster and an integer "
                         f"index, got {text!r}")
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {task['index']} is out of range for the "
                         f"{len(cluster[task['type']])} {task['type']!r} hosts of the cluster, got {text!r}")
    return config


def make_strategy(name: str, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`.

    Args:
      name: `"default"` (no distribution: one device), `"mirrored"` (every local GPU, or `devices`; the CPU when
        there is no GPU) or `"multi_worker"` (`MultiWorkerMirroredStrategy`: every local GPU of every worker
        listed in the `TF_CONFIG` environment variable; without `TF_CONFIG`, this machine alone).
      devices: for `"mirrored"` only, the devices to mirror on, e.g. `["/cpu:0", "/cpu:1"]`.

    `"multi_worker"` must be created when the program starts, before TensorFlow runs any op (TensorFlow's rule).
    Create one strategy per process and reuse it: a second MirroredStrategy in the same process can mismatch
    the first one's collective ops. Keras 3.15 cannot `fit` a plain Keras model on several workers
    (keras-team/keras#20585; the Distiller works around it): train teachers outside a multi-worker strategy.

    Raises:
      ValueError: an unknown `name`, `devices` given for another strategy, or a malformed `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if devices is not None and name != "mirrored":
        raise ValueError(f"devices can only be given to the mirrored strategy, got strategy {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    text = os.environ.get("TF_CONFIG")
    if text:
        config = _check_tf_config(text)
        logging.info("multi_worker: task %s %d of cluster %s", config["task"]["type"], config["task"]["index"],
                     config["cluster"])
    else:
        logging.warning("multi_worker: TF_CONFIG is not set, so this machine trains alone")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on a multi-worker strategy's other workers
    (task `chief`, or `worker` 0 when the cluster has no chief, as TensorFlow's multi-worker guide does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> `(i, n)`: this machine is shard `i` of `n`, `0 <= i < n`. ValueError in one line otherwise."""
    match = _SHARD_PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"--shard must look like i/n with 0 <= i < n, e.g. 0/4, got {text!r}")
    return _check_shard(int(match.group(1)), int(match.group(2)), text)


def _check_shard(index, count, shown) -> tuple[int, int]:
    """`(index, count)` as ints when `0 <= index < count`; `shown` is what the user gave, for the message."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (index, count)):
        raise ValueError(f"--shard must be two integers i/n with 0 <= i < n, got {shown!r}")
    index, count = int(index), int(count)
    if count < 1:
        raise ValueError(f"--shard must have n >= 1 shards, got {shown!r}")
    if not 0 <= index < count:
        raise ValueError(f"--shard index must satisfy 0 <= i < n ({count}), got {shown!r}")
    return index, count


def shard_pairs(pairs: Iterable[tuple[float, int]], shard: str | tuple[int, int]) -> list[tuple[float, int]]:
    """The (sigma, seed) pairs that shard `i` of `n` runs: every `n`-th pair of the sorted grid, from the `i`-th.

    The split depends only on the *set* of pairs, not on their order or on which runs have finished, so
    machines given the same `--sigmas` and `--seeds` agree, and a resumed shard keeps its pairs: shard the full
    grid first, then skip the finished runs. The `n` shards cover every pair exactly once, and their sizes
    differ by at most one. Sorting is seed-major, so each shard gets a spread of sigmas for the first seed.

    Args:
      pairs: (sigma, seed) pairs; duplicates count once.
      shard: `"i/n"` or `(i, n)`.

    Returns:
      This shard's pairs as `(float sigma, int seed)`, in the order `pairs` gave them.
    """
    if isinstance(shard, str):
        index, count = parse_shard(shard)
    elif isinstance(shard, tuple) and len(shard) == 2:
        index, count = _check_shard(shard[0], shard[1], shard)
    else:
        raise ValueError(f"shard must be 'i/n' or a pair (i, n), got {shard!r}")
    unique = list(dict.fromkeys((float(sigma), int(seed)) for sigma, seed in pairs))
    rank = {pair: r for r, pair in enumerate(sorted(unique, key=lambda pair: (pair[1], pair[0])))}
    return [pair for pair in unique if rank[pair] % count == index]


def merge_sweeps(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The rows of several `sweep.csv` files (e.g. one per shard) as one list, one row per (sigma, alpha, seed).

    Args:
      paths: `sweep.csv` files, or directories holding one.

    Returns:
      The rows as read (string values, the `sweep.csv` columns), sorted by (sigma, alpha, seed). A pair listed
      twice keeps its row from the later file, as a rerun replaces its row in `sweep.csv`; a warning is logged
      when the two disagree on the test errors.

    Raises:
      ValueError: a path that is neither a `sweep.csv` file nor a directory holding one.
    """
    merged: dict[tuple[float, float, int], tuple[dict, Path]] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            path = path / "sweep.csv"
        if not path.is_file():
            raise ValueError(f"sweep must be a sweep.csv file or a directory holding one, got {str(given)!r}")
        for row in artifacts.read_csv(path):
            key = (float(row["sigma"]), float(row["alpha"]), int(row["seed"]))
            earlier = merged.get(key)
            if earlier is not None and earlier[0].get("test_errors") != row.get("test_errors"):
                logging.warning("sigma %g alpha %g seed %d: %s test errors in %s, %s in %s; keeping the latter",
                                *key, earlier[0].get("test_errors"), earlier[1], row.get("test_errors"), path)
            merged[key] = (row, path)
    return [merged[key][0] for key in sorted(merged)]
