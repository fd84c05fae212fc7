"""Metric rows of one run: append-only JSONL, a human log, and the same rows as Parquet.

Files in ``logs/``: ``metrics.jsonl`` (one JSON object per line: ``step``, ``timestamp``,
``attempt`` and the metrics, in the seed's schema), ``training.log`` (the seed's human lines),
``metrics.parquet`` (the resolved rows, rewritten atomically) and ``attempts.json``.

Attempts. A run that resumes from a checkpoint replays steps its interrupted attempt already logged.
:meth:`MetricsLogger.begin_attempt` (``start_step`` = first step the new attempt logs) records the
boundary in ``attempts.json``; every row carries its attempt number. The *resolved view* hides a row
when a later attempt began at or before its step, and keeps one row per step (the latest attempt's,
the last one written on a tie), ordered by step. Nothing is deleted: ``load_metrics(resolved=False)``
still shows every row ever written.

Non-finite values. JSON has no NaN or Infinity, so such a value is written as ``null`` and the row
gets ``"nonfinite": {"<key>": "nan" | "inf" | "-inf"}``; :meth:`load_metrics` puts the float back, and
Parquet holds it as a real float NaN/inf. Strict JSON readers accept every line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from orchestrator.monitoring import atomic
from orchestrator.monitoring.cadence import log_step
from orchestrator.monitoring.metric_rows import is_number, ordered_keys, resolve_rows, rows_to_arrow

log = logging.getLogger(__name__)

WARNING_TIME = "%Y-%m-%d %H:%M:%S"
"""How a warning's time is written in training.log, and read back by :meth:`MetricsLogger.warnings_since`."""

RESERVED_KEYS = ("step", "timestamp", "attempt", "nonfinite")
"""Keys the logger sets itself; a metric with one of these names is dropped."""

MAX_PENDING_ROWS = 100_000
"""Rows kept in memory while the disk refuses writes; older ones are dropped beyond this."""

_NONFINITE_TEXT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsLogger:
    """Writes and reads the metric rows of one run; never raises on a failing disk.

    One writer per ``log_dir``; readers (analysis, the seed's snippets) may open the same folder at
    any time, and a new writer instance continues the attempt numbering found on disk (``attempt``
    is the number stamped on the rows this instance writes). ``parquet_interval`` rows between
    Parquet rewrites (0: only on ``flush_parquet()``/``close()``). Not thread-safe: one owner.
    """

    def __init__(self, log_dir: Path | str, log_interval: int = 10, parquet_interval: int = 100):
        if not isinstance(log_interval, int) or log_interval < 1:
            raise ValueError(f"log_interval={log_interval!r} must be an integer >= 1")
        self.log_dir = Path(log_dir)
        self.log_interval = log_interval
        self.parquet_interval = parquet_interval
        self.metrics_file = self.log_dir / "metrics.jsonl"
        self.log_file = self.log_dir / "training.log"
        self.parquet_file = self.log_dir / "metrics.parquet"
        self.attempts_file = self.log_dir / "attempts.json"
        self._pending: deque[tuple[str, str]] = deque()
        self._handles: tuple[IO[str], IO[str]] | None = None
        self._failing = False
        self._attempts_dirty = False
        self._rows_since_parquet = 0
        self._wrote_rows = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._touch()
        atomic.remove_stale_temps(self.log_dir)
        self._attempts = read_attempts(self.attempts_file)
        self.attempt = max((a["attempt"] for a in self._attempts), default=1)

    def should_log(self, step: int) -> bool:
        """Whether ``step`` is a logging step (step 0 is, as in the seed)."""
        return log_step(step, self.log_interval)

    def log_metrics(self, step: int, metrics: dict[str, Any], flush: bool = True) -> bool:
        """Append one row for ``step``; ``False`` (and a warning) if the disk refused it.

        A refused row stays in memory and is written before the next one, so a transient full disk
        loses nothing.
        """
        row: dict[str, Any] = {"step": int(step), "timestamp": datetime.now().isoformat(),
                               "attempt": self.attempt}
        nonfinite: dict[str, str] = {}
        for key, value in metrics.items():
            if key in RESERVED_KEYS:
                continue
            value = _plain(value)
            if isinstance(value, float) and not math.isfinite(value):
                nonfinite[key] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
                value = None
            row[key] = value
        if nonfinite:
            row["nonfinite"] = nonfinite
        if len(self._pending) >= MAX_PENDING_ROWS:
            self._pending.popleft()
            log.warning("metrics backlog full; dropped the oldest unwritten row")
        self._pending.append((json.dumps(row, allow_nan=False, default=str), _human_line(row)))
        written = self._drain(flush)
        if written and self.parquet_interval:
            self._rows_since_parquet += 1
            if self._rows_since_parquet >= self.parquet_interval:
                self.flush_parquet()
        return written

    def log_warning(self, message: str) -> bool:
        """Append ``WARNING message`` to training.log, so the run's own log tells what training went
        on through (a refused or corrupt checkpoint); ``False`` (and a logged warning) if the disk refused."""
        self._flush_handles()  # the rows before it stay before it
        try:
            with atomic.open_output(self.log_file, "a") as fh:
                fh.write(f"[{datetime.now():{WARNING_TIME}}] WARNING {message}\n")
        except OSError as exc:
            log.warning("warning not written to %s (%s)", self.log_file, exc)
            return False
        return True

    def warnings_since(self, moment: datetime) -> list[str]:
        """The messages :meth:`log_warning` wrote at ``moment`` or later (to the second), in order."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            stamp, sep, message = line.partition("] WARNING ")
            try:
                written = datetime.strptime(stamp.removeprefix("["), WARNING_TIME) if sep else None
            except ValueError:
                continue
            if written is not None and written >= moment.replace(microsecond=0):
                found.append(message)
        return found

    def begin_attempt(self, start_step: int) -> int:
        """Start a new attempt whose first logged step is ``start_step``; return its number.

        Rows of earlier attempts at ``start_step`` or later leave the resolved view. Call it when
        training resumes from a checkpoint; a fresh run is attempt 1 without calling it.
        """
        self.flush()
        nothing_logged = not self.metrics_file.exists() or self.metrics_file.stat().st_size == 0
        if nothing_logged and not self._pending and not self._attempts:
            return self.attempt
        self.attempt = max([self.attempt, *(a["attempt"] for a in read_attempts(self.attempts_file))]) + 1
        self._attempts.append({"attempt": self.attempt, "start_step": int(start_step),
                               "timestamp": datetime.now().isoformat()})
        self._attempts_dirty = True
        self._write_attempts()
        return self.attempt

    def load_metrics(self, resolved: bool = True) -> list[dict[str, Any]]:
        """The rows of this run: one per step from the latest attempt (default), or every raw row."""
        self._flush_handles()
        rows = read_rows(self.metrics_file)
        return resolve_rows(rows, self._all_attempts()) if resolved else rows

    def get_latest_step(self) -> int:
        """The last step in the resolved view, 0 when nothing is logged."""
        rows = self.load_metrics()
        return rows[-1]["step"] if rows else 0

    def get_metrics_summary(self) -> dict[str, Any]:
        """``total_steps``/``first_step``/``last_step`` and ``<key>_min/_max/_mean/_final``.

        Min, max and mean ignore non-finite values; ``_final`` is the last value as logged.
        """
        rows = self.load_metrics()
        if not rows:
            return {"total_steps": 0}
        summary: dict[str, Any] = {"total_steps": len(rows), "first_step": rows[0]["step"],
                                   "last_step": rows[-1]["step"]}
        for key in ordered_keys(rows):
            if key in RESERVED_KEYS:
                continue
            values = [r[key] for r in rows if is_number(r.get(key))]
            if not values:
                continue
            finite = [v for v in values if math.isfinite(v)]
            summary[f"{key}_min"] = min(finite) if finite else math.nan
            summary[f"{key}_max"] = max(finite) if finite else math.nan
            summary[f"{key}_mean"] = sum(finite) / len(finite) if finite else math.nan
            summary[f"{key}_final"] = values[-1]
        return summary

    def flush_parquet(self) -> Path | None:
        """Rewrite ``metrics.parquet`` from the resolved view; ``None`` (and a warning) on failure."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._rows_since_parquet = 0
        try:
            table = rows_to_arrow(self.load_metrics())
            atomic.write_atomic(self.parquet_file, lambda fh: pq.write_table(table, fh))
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            log.warning("metrics.parquet not written (%s); the next flush will try again", exc)
            return None
        return self.parquet_file

    def flush(self) -> bool:
        """Write pending rows and fsync both files, so a crash right after loses nothing."""
        ok = self._drain(flush=True)
        if ok and self._handles is not None:
            try:
                for fh in self._handles:
                    os.fsync(fh.fileno())
            except OSError as exc:
                log.warning("metrics fsync failed (%s)", exc)
                return False
        return ok

    def close(self) -> None:
        """Flush, write the Parquet view if this instance logged rows, and release the files."""
        self.flush()
        if self._wrote_rows:
            self.flush_parquet()
        self._close_handles()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self, flush: bool) -> bool:
        """Write pending rows; a row leaves the backlog only once flushed (when ``flush``)."""
        try:
            if self._attempts_dirty:
                self._write_attempts(raise_errors=True)
            if self._pending and self._handles is None:
                self._handles = (self._open_append(self.metrics_file), self._open_append(self.log_file))
            while self._pending:
                line, text = self._pending[0]
                for fh, data in zip(self._handles, (line, text), strict=True):
                    fh.write(data + "\n")
                    if flush:
                        fh.flush()
                self._pending.popleft()
                self._wrote_rows = True
            if flush and self._handles is not None:
                for fh in self._handles:
                    fh.flush()
        except OSError as exc:
            if not self._failing:
                log.warning("metrics not written to %s (%s); keeping %d row(s) in memory and retrying",
                            self.log_dir, exc, len(self._pending))
            self._failing = True
            self._close_handles()
            return False
        if self._failing:
            log.warning("metrics writes to %s work again", self.log_dir)
            self._failing = False
        return True

    def _open_append(self, path: Path) -> IO[str]:
        """Open for appending, first ending a partial last line a crash or full disk left behind."""
        fh = atomic.open_output(path, "a")
        try:
            if path.stat().st_size > 0:
                with open(path, "rb") as rd:
                    rd.seek(-1, 2)
                    if rd.read(1) != b"\n":
                        fh.write("\n")
        except OSError:
            fh.close()
            raise
        return fh

    def _flush_handles(self) -> None:
        if self._handles is not None:
            self._drain(flush=True)

    def _close_handles(self) -> None:
        if self._handles is None:
            return
        for fh in self._handles:
            try:
                fh.close()
            except OSError:
                pass
        self._handles = None

    def _touch(self) -> None:
        for path in (self.metrics_file, self.log_file):
            if not path.exists():
                try:
                    atomic.open_output(path, "a").close()
                except OSError as exc:
                    log.warning("could not create %s (%s)", path, exc)

    def _all_attempts(self) -> list[dict[str, Any]]:
        merged = {a["attempt"]: a for a in read_attempts(self.attempts_file)}
        merged.update({a["attempt"]: a for a in self._attempts})
        return sorted(merged.values(), key=lambda a: a["attempt"])

    def _write_attempts(self, raise_errors: bool = False) -> None:
        try:
            atomic.write_json_atomic(self.attempts_file, {"attempts": self._all_attempts()})
        except OSError as exc:
            if raise_errors:
                raise
            log.warning("attempts.json not written (%s); will retry with the next row", exc)
            return
        self._attempts_dirty = False


def read_run_metrics(log_dir: Path | str) -> list[dict[str, Any]]:
    """The resolved rows of the run logging into ``log_dir``, as :meth:`MetricsLogger.load_metrics`
    gives them, read without a logger: nothing is created, so ``ls`` and ``compare`` leave a run's
    folder as they found it."""
    log_dir = Path(log_dir)
    return resolve_rows(read_rows(log_dir / "metrics.jsonl"), read_attempts(log_dir / "attempts.json"))


def read_rows(metrics_file: Path) -> list[dict[str, Any]]:
    """Every row of a ``metrics.jsonl`` (all attempts), unparsable lines skipped with a warning."""
    try:
        text = metrics_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["step"] = int(row["step"])
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        marks = row.pop("nonfinite", None)
        for key, text_value in (marks.items() if isinstance(marks, dict) else ()):
            row[key] = _NONFINITE_TEXT.get(text_value, math.nan)
        rows.append(row)
    if bad:
        log.warning("skipped %d unparsable line(s) in %s", bad, metrics_file)
    return rows


def read_attempts(attempts_file: Path) -> list[dict[str, Any]]:
    """The attempts recorded in ``attempts.json``; [] (one attempt) when it is missing or unreadable."""
    try:
        data = json.loads(attempts_file.read_text())
        return [{"attempt": int(a["attempt"]), "start_step": int(a["start_step"]),
                 "timestamp": a.get("timestamp")} for a in data["attempts"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("attempts file %s unreadable (%s); treating the run as one attempt", attempts_file, exc)
        return []


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: tensors and numpy scalars become Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return atomic.json_safe(value)


def _human_line(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key in RESERVED_KEYS:
            continue
        if key in row.get("nonfinite", {}):
            value = row["nonfinite"][key]
        parts.append(f"{key}={value:.6f}" if isinstance(value, float) else f"{key}={value}")
    return f"[{datetime.now():%Y-%m-%d %H:%M:%S}] Step {row['step']}: {', '.join(parts)}"
