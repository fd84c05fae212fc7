"""MetricsLogger on real files: seed contract, attempts after a resume, Parquet = JSONL, failing disks."""

from __future__ import annotations

import errno
import json
import logging
import math
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.monitoring import MetricsLogger, atomic


def _strict_json(line: str) -> dict:
    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def _log_run(logger: MetricsLogger, steps: range, offset: float = 0.0) -> None:
    for step in steps:
        metrics = {"loss": 5.0 - step / 100 + offset, "learning_rate": 6e-4, "tokens_per_sec": 1000.0 + step}
        if step % 30 == 0:
            metrics["val_loss"] = 4.0 - step / 100 + offset
        logger.log_metrics(step, metrics)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_should_log_follows_the_seed_cadence(tmp_path):
    logger = MetricsLogger(tmp_path, log_interval=10)
    assert [s for s in (0, 5, 10, 15, 20) if logger.should_log(s)] == [0, 10, 20]


def test_rows_round_trip_are_visible_at_once_and_persist(tmp_path):
    logger = MetricsLogger(tmp_path)
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "training.log").exists()
    assert logger.get_latest_step() == 0 and logger.get_metrics_summary() == {"total_steps": 0}
    for step, loss in [(0, 3.0), (10, 2.5), (20, 2.0)]:
        logger.log_metrics(step, {"loss": loss, "learning_rate": 1e-3, "perplexity": math.exp(loss)})

    reader = MetricsLogger(tmp_path)
    rows = reader.load_metrics()
    assert [r["step"] for r in rows] == [0, 10, 20] and [r["loss"] for r in rows] == [3.0, 2.5, 2.0]
    assert all({"timestamp", "learning_rate", "perplexity"} <= set(r) and r["attempt"] == 1 for r in rows)
    assert reader.get_latest_step() == 20
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all({"step", "timestamp", "attempt"} <= set(_strict_json(x)) for x in lines)
    human = (tmp_path / "training.log").read_text().splitlines()
    assert human[1].endswith("Step 10: loss=2.500000, learning_rate=0.001000, perplexity=12.182494")


def test_summary_uses_the_seed_keys_and_handles_late_keys(tmp_path):
    logger = MetricsLogger(tmp_path)
    _log_run(logger, range(0, 100, 10))
    summary = logger.get_metrics_summary()
    assert summary["total_steps"] == 10 and summary["first_step"] == 0 and summary["last_step"] == 90
    assert summary["loss_min"] == pytest.approx(4.1) and summary["loss_max"] == 5.0
    assert summary["loss_mean"] == pytest.approx(4.55) and summary["loss_final"] == pytest.approx(4.1)
    assert summary["val_loss_final"] == pytest.approx(3.1) and summary["val_loss_max"] == 4.0
    assert "attempt_min" not in summary and "step_min" not in summary


def test_nonfinite_values_are_strict_json_and_come_back_as_floats(tmp_path):
    logger = MetricsLogger(tmp_path)
    nan, inf = float("nan"), float("inf")
    logger.log_metrics(0, {"loss": nan, "grad_norm": inf, "delta": -inf, "ok": 1.0})
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    raw = _strict_json(line)
    assert raw["loss"] is None and raw["nonfinite"] == {"loss": "nan", "grad_norm": "inf", "delta": "-inf"}
    row = logger.load_metrics()[0]
    assert math.isnan(row["loss"]) and row["grad_norm"] == math.inf and row["delta"] == -math.inf
    assert "nonfinite" not in row
    assert "loss=nan" in (tmp_path / "training.log").read_text()
    summary = logger.get_metrics_summary()
    assert math.isnan(summary["loss_final"]) and summary["ok_final"] == 1.0


def test_resumed_run_has_each_step_once_with_the_new_attempt_past_the_resume_point(tmp_path):
    first = MetricsLogger(tmp_path)
    _log_run(first, range(0, 100, 10))  # crashed after step 90; last checkpoint at step 60
    second = MetricsLogger(tmp_path)  # a new process: the rebuilt monitoring actor
    assert second.attempt == 1
    assert second.begin_attempt(60) == 2
    _log_run(second, range(60, 150, 10), offset=100.0)

    rows = MetricsLogger(tmp_path).load_metrics()
    assert [r["step"] for r in rows] == list(range(0, 150, 10))
    assert all(r["attempt"] == (2 if r["step"] >= 60 else 1) for r in rows)
    assert rows[-1]["loss"] == pytest.approx(5.0 - 1.4 + 100.0)
    raw = second.load_metrics(resolved=False)
    assert len(raw) == 10 + 9 and sum(r["step"] == 70 for r in raw) == 2

    third = MetricsLogger(tmp_path)
    assert third.attempt == 2 and third.begin_attempt(40) == 3
    _log_run(third, range(40, 70, 10), offset=200.0)
    rows = third.load_metrics()
    assert [r["step"] for r in rows] == list(range(0, 70, 10))
    assert [r["attempt"] for r in rows] == [1, 1, 1, 1, 3, 3, 3]
    assert third.get_latest_step() == 60


def test_begin_attempt_before_any_row_keeps_attempt_one(tmp_path):
    logger = MetricsLogger(tmp_path)
    assert logger.begin_attempt(0) == 1
    logger.log_metrics(0, {"loss": 1.0})
    assert logger.load_metrics()[0]["attempt"] == 1 and not (tmp_path / "attempts.json").exists()


def test_parquet_and_jsonl_hold_the_same_resolved_rows(tmp_path):
    logger = MetricsLogger(tmp_path, parquet_interval=0)
    _log_run(logger, range(0, 100, 10))
    logger.begin_attempt(50)
    _log_run(logger, range(50, 120, 10), offset=1.0)
    logger.log_metrics(120, {"loss": float("nan"), "learning_rate": 6e-4, "note": "spike"})
    logger.close()

    rows = logger.load_metrics()
    table = pq.read_table(tmp_path / "metrics.parquet")
    assert table.schema.field("step").type == pa.int64() and table.schema.field("attempt").type == pa.int64()
    assert table.schema.field("loss").type == table.schema.field("val_loss").type == pa.float64()
    assert table.schema.field("note").type == pa.string()
    from_parquet = table.to_pylist()
    assert len(from_parquet) == len(rows) == 13 and math.isnan(from_parquet[-1]["loss"])
    for a, b in zip(rows, from_parquet, strict=True):
        assert set(b) >= set(a) and all(_same(a[k], b[k]) for k in a)
        assert all(b[k] is None for k in set(b) - set(a))

    frame = pd.read_parquet(tmp_path / "metrics.parquet")
    assert frame["step"].tolist() == [r["step"] for r in rows] and frame["val_loss"].isna().sum() == 9
    raw = pd.read_json(tmp_path / "metrics.jsonl", lines=True)
    assert len(raw) == 10 + 7 + 1 and set(raw["attempt"]) == {1, 2}


def test_parquet_is_refreshed_every_interval(tmp_path):
    logger = MetricsLogger(tmp_path, parquet_interval=5)
    _log_run(logger, range(0, 40, 10))
    assert not (tmp_path / "metrics.parquet").exists()
    _log_run(logger, range(40, 60, 10))
    assert pq.read_table(tmp_path / "metrics.parquet").num_rows == 5


def test_a_full_disk_is_a_warning_and_no_row_is_lost(tmp_path, caplog):
    assert os.path.exists("/dev/full"), "Linux's /dev/full makes a real ENOSPC"
    logger = MetricsLogger(tmp_path)
    logger.log_metrics(0, {"loss": 1.0})
    logger.close()
    target = tmp_path / "metrics.jsonl"
    kept = target.read_bytes()
    target.unlink()
    target.symlink_to("/dev/full")

    with caplog.at_level(logging.WARNING):
        assert logger.log_metrics(10, {"loss": 0.9}) is False
        assert logger.log_metrics(20, {"loss": 0.8}) is False
    assert "No space left on device" in caplog.text and caplog.text.count("keeping") == 1

    target.unlink()
    target.write_bytes(kept)
    assert logger.log_metrics(30, {"loss": 0.7}) is True
    assert [r["step"] for r in logger.load_metrics()] == [0, 10, 20, 30]


def test_injected_write_failures_are_warnings(tmp_path, monkeypatch, caplog):
    logger = MetricsLogger(tmp_path, parquet_interval=0)
    logger.log_metrics(0, {"loss": 1.0})
    logger.close()  # files are opened again (through the seam) by the next write
    (tmp_path / "metrics.parquet").unlink()

    def refuse(path, mode):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "open_output", refuse)
    with caplog.at_level(logging.WARNING):
        assert logger.log_metrics(10, {"loss": 0.5}) is False
        assert logger.flush_parquet() is None
        assert logger.begin_attempt(10) == 2
    assert "Permission denied" in caplog.text and not (tmp_path / "metrics.parquet").exists()

    monkeypatch.undo()
    assert logger.log_metrics(20, {"loss": 0.25}) is True
    assert logger.flush_parquet() is not None
    assert json.loads((tmp_path / "attempts.json").read_text())["attempts"][0]["start_step"] == 10
    raw = logger.load_metrics(resolved=False)
    assert [(r["step"], r["attempt"]) for r in raw] == [(0, 1), (10, 1), (20, 2)]
    assert [(r["step"], r["attempt"]) for r in logger.load_metrics()] == [(0, 1), (20, 2)]


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next_row(tmp_path, caplog):
    logger = MetricsLogger(tmp_path)
    logger.log_metrics(0, {"loss": 1.0})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 10, "loss": 0.')  # a process killed mid-line
    reopened = MetricsLogger(tmp_path)
    reopened.log_metrics(20, {"loss": 0.5})
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in reopened.load_metrics()] == [0, 20]
    assert "1 unparsable line" in caplog.text


def test_tensor_and_numpy_scalars_are_logged_as_numbers(tmp_path):
    import numpy as np
    import torch

    logger = MetricsLogger(tmp_path)
    logger.log_metrics(0, {"loss": torch.tensor(2.5), "grad_norm": np.float32(0.5), "step": 99})
    row = _strict_json((tmp_path / "metrics.jsonl").read_text())
    assert row["loss"] == 2.5 and row["grad_norm"] == 0.5 and row["step"] == 0


def test_unflushed_rows_are_seen_by_the_writer_and_reach_disk_on_flush(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in (0, 10, 20):
        logger.log_metrics(step, {"loss": 1.0}, flush=False)
    assert [r["step"] for r in logger.load_metrics()] == [0, 10, 20]
    logger.log_metrics(30, {"loss": 1.0}, flush=False)
    assert logger.flush() is True
    assert [r["step"] for r in MetricsLogger(tmp_path).load_metrics()] == [0, 10, 20, 30]
