"""Metric rows as data: the resolved view of a resumed run and its one-schema Arrow table.

Pure functions over lists of row dicts, kept apart from the file handling in ``metrics.py`` so the
rules that decide which row a reader sees can be read (and tested) on their own.
"""

from __future__ import annotations

import json
import math
from typing import Any

from orchestrator.monitoring import atomic


def resolve_rows(rows: list[dict[str, Any]], attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, ordered by step: rows superseded by a later attempt are left out.

    A row of attempt ``a`` at step ``s`` is superseded when an attempt ``b > a`` began at a step
    ``<= s``. Among the remaining rows of one step, the highest attempt wins, then the last written.
    """
    starts = [(a["attempt"], a["start_step"]) for a in attempts]
    cutoff: dict[int, float] = {}
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        attempt = int(row.get("attempt", 1))
        if attempt not in cutoff:
            cutoff[attempt] = min((s for b, s in starts if b > attempt), default=math.inf)
        step = row["step"]
        if step >= cutoff[attempt]:
            continue
        current = best.get(step)
        if current is None or attempt >= int(current.get("attempt", 1)):
            best[step] = row
    return [best[s] for s in sorted(best)]


def rows_to_arrow(rows: list[dict[str, Any]]) -> Any:
    """A ``pyarrow.Table`` of ``rows`` with one explicit schema over every key that ever appears.

    ``step``/``attempt`` are int64, other numbers float64 (null where a row lacks the key, e.g.
    ``val_loss`` between evaluations), booleans bool, strings string; anything else JSON text.
    """
    import pyarrow as pa

    fields, converters = [], {}
    for key in ordered_keys(rows):
        kinds = {_kind(r[key]) for r in rows if r.get(key) is not None}
        if key in ("step", "attempt"):
            arrow_type, convert = pa.int64(), int
        elif kinds <= {"number"}:
            arrow_type, convert = pa.float64(), float
        elif kinds == {"bool"}:
            arrow_type, convert = pa.bool_(), bool
        elif kinds == {"str"}:
            arrow_type, convert = pa.string(), str
        else:
            arrow_type, convert = pa.string(), _as_text
        fields.append(pa.field(key, arrow_type))
        converters[key] = convert
    data = [{k: (None if r.get(k) is None else converters[k](r[k])) for k in converters} for r in rows]
    return pa.Table.from_pylist(data, schema=pa.schema(fields))


def ordered_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of ``rows``: ``step``, ``attempt``, ``timestamp`` first, then by first appearance."""
    keys: dict[str, None] = {"step": None, "attempt": None, "timestamp": None} if rows else {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str" if isinstance(value, str) else "other"


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(atomic.json_safe(value), default=str)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a metric number (``bool`` is an ``int`` in Python but not a metric)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
