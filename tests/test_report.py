import csv
import json

import pytest

from tfkd import report


def _write_sweep(directory, rows):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sigma", "alpha", "seed", "test_errors", "test_accuracy",
                                                    "val_errors", "epochs", "wall_seconds"])
        writer.writeheader()
        for sigma, seed, errors in rows:
            writer.writerow({"sigma": sigma, "alpha": 0.15, "seed": seed, "test_errors": errors,
                             "test_accuracy": 1 - errors / 10000, "val_errors": errors + 10, "epochs": 2,
                             "wall_seconds": 1.5})
    (directory / "teacher.json").write_text(json.dumps({"test_errors": 60, "val_errors": 70, "settings": {}}))


def test_summary_statistics_and_paired_test_by_hand(tmp_path):
    _write_sweep(tmp_path / "sweep", [(0.0, 0, 100), (0.0, 1, 102), (0.0, 2, 98),
                                      (0.8, 0, 95), (0.8, 1, 99), (0.8, 2, 94)])
    table = {e["sigma"]: e for e in report.summarise(report.load_rows([str(tmp_path / "sweep")]))}
    assert table[0.0]["mean"] == 100 and table[0.0]["std"] == pytest.approx(2.0)
    assert table[0.8]["mean"] == pytest.approx(96.0) and table[0.8]["improvement"] == pytest.approx(0.04)
    # Differences -5, -3, -4: t = -4 / (1 / sqrt(3)) = -6.93 with 2 degrees of freedom -> p = 0.0202.
    assert table[0.8]["mean_difference"] == pytest.approx(-4.0)
    assert table[0.8]["p_value"] == pytest.approx(0.0202, abs=5e-4)
    assert table[0.8]["article"] == 86


def test_shards_merge_without_double_counting(tmp_path):
    _write_sweep(tmp_path / "a", [(0.0, 0, 100), (0.4, 0, 90)])
    _write_sweep(tmp_path / "b", [(0.0, 0, 100), (0.4, 1, 92)])
    rows = report.load_rows([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(r["sigma"], r["seed"]) for r in rows] == [(0.0, 0), (0.4, 0), (0.4, 1)]


def test_report_files_and_partial_banner(tmp_path):
    _write_sweep(tmp_path / "sweep", [(0.0, 0, 100), (0.0, 1, 104), (0.5, 0, 97), (0.5, 1, 99)])
    assert report.main([str(tmp_path / "sweep"), "--results_dir", str(tmp_path / "results")]) == 0
    markdown = (tmp_path / "results" / "mnist_sweep.md").read_text()
    assert "PARTIAL" in markdown and "| 0.5 | 2 | 98.0 +- 1.4 |" in markdown and "paired t-test" in markdown
    assert (tmp_path / "results" / "mnist_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "results" / "mnist_sweep.csv").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "results" / "mnist_teacher.json").read_text())["test_errors"] == 60


def test_missing_sweep_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "sweep.csv" in capsys.readouterr().err
