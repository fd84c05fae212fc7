"""Learning-rate, wave-ratio and annealing schedules, and early stopping with its state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spectral_gpt.config import ConfigError
from spectral_gpt.schedules import (
    EarlyStopping,
    lr_at,
    next_wave_ratio,
    standard_embed_ratio_at,
    wave_ratio_target,
)


def test_lr_warms_up_from_zero_then_decays_to_exactly_zero():
    lrs = [lr_at(s, max_lr=1e-3, warmup_steps=100, total_steps=2000) for s in range(2001)]
    assert lrs[0] == 0.0
    assert lrs[50] == pytest.approx(0.5e-3)
    assert lrs[100] == pytest.approx(1e-3)
    assert max(lrs) == lrs[100]
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101], strict=True))
    assert all(a >= b for a, b in zip(lrs[100:-1], lrs[101:], strict=True))
    assert lrs[1050] == pytest.approx(0.5e-3)  # half way through the cosine
    assert lrs[2000] == 0.0
    assert lr_at(5000, max_lr=1e-3, warmup_steps=100, total_steps=2000) == 0.0


def test_short_runs_cap_the_warmup_at_a_tenth_and_still_decay():
    lrs = [lr_at(s, max_lr=1.0, warmup_steps=500, total_steps=100) for s in range(101)]
    assert lrs[0] == 0.0 and lrs[10] == 1.0 and lrs[5] == pytest.approx(0.5)
    assert lrs[99] < 0.01 and lrs[100] == 0.0
    # fewer than 10 steps: no warmup at all, and no division by zero
    assert lr_at(0, max_lr=1.0, warmup_steps=500, total_steps=5) == 1.0
    assert lr_at(0, max_lr=1.0, warmup_steps=0, total_steps=1) == 1.0
    assert lr_at(1, max_lr=1.0, warmup_steps=0, total_steps=1) == 0.0


@given(step=st.integers(0, 10_000), warmup=st.integers(0, 2_000), total=st.integers(1, 5_000))
def test_lr_is_always_between_zero_and_max(step, warmup, total):
    lr = lr_at(step, max_lr=3e-4, warmup_steps=warmup, total_steps=total)
    assert 0.0 <= lr <= 3e-4 and math.isfinite(lr)


def test_lr_rejects_a_bad_total_or_step():
    with pytest.raises(ConfigError, match="total_steps=0"):
        lr_at(0, max_lr=1.0, warmup_steps=0, total_steps=0)
    with pytest.raises(ConfigError, match="step=-1"):
        lr_at(-1, max_lr=1.0, warmup_steps=0, total_steps=10)


def test_wave_ratio_target_and_ema():
    assert wave_ratio_target(0, 1000) == 0.5
    assert wave_ratio_target(500, 1000) == pytest.approx(0.7)
    assert wave_ratio_target(1000, 1000) == pytest.approx(0.9)
    assert next_wave_ratio(0.622, 0, 1000) == pytest.approx(0.99 * 0.622 + 0.01 * 0.5)
    assert next_wave_ratio(0.999, 0, 10) == 0.99
    assert next_wave_ratio(0.0, 0, 10) == pytest.approx(0.01)
    r = 0.622
    for step in range(15_000):
        r = next_wave_ratio(r, step, 15_000)
        if step == 249:
            assert 0.5 < r < 0.56  # the original logged 0.505 at step 250
    assert r == pytest.approx(0.9, abs=0.01)  # and 0.897 at the end


def test_standard_embed_ratio_anneals_to_zero():
    assert standard_embed_ratio_at(0) == 1.0
    assert standard_embed_ratio_at(1500) == pytest.approx(0.5)
    assert standard_embed_ratio_at(3000) == 0.0 and standard_embed_ratio_at(9000) == 0.0
    assert standard_embed_ratio_at(5, annealing_steps=10) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="annealing_steps=0"):
        standard_embed_ratio_at(0, annealing_steps=0)


def test_early_stopping_counts_misses_against_min_delta():
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert es.best == math.inf and es.best_step is None and not es.should_stop
    assert es.update(3.0, step=250)
    assert es.update(2.95, step=500)  # the new best (its checkpoint is the best), but not by min_delta
    assert es.counter == 1 and es.best == 2.95 and es.reference == 3.0 and not es.should_stop
    assert es.update(2.85, step=750)  # beats the reference 3.0 by more than 0.1
    assert es.counter == 0 and es.best == 2.85 and es.reference == 2.85 and es.best_step == 750
    assert not es.update(float("nan"), step=1000)
    assert es.update(2.8, step=1250)  # lowest so far, yet within min_delta of 2.85: patience runs out
    assert es.should_stop and es.best == 2.8 and es.best_step == 1250


def test_early_stopping_state_round_trips_through_torch_and_json(tmp_path):
    fresh = EarlyStopping(patience=3)
    assert fresh.state_dict()["best"] == math.inf
    es = EarlyStopping(patience=3, min_delta=0.0)
    es.update(2.0, step=10)
    es.update(2.5, step=20)
    torch.save(es.state_dict(), tmp_path / "es.pt")
    restored = EarlyStopping(patience=3, min_delta=0.0)
    restored.load_state_dict(torch.load(tmp_path / "es.pt", weights_only=True))
    assert (restored.best, restored.best_step, restored.counter) == (2.0, 10, 1)
    older = EarlyStopping(patience=3)
    older.load_state_dict({"best": 2.0, "best_step": 10, "counter": 1})  # saved before "reference" existed
    assert older.reference == 2.0
    again = EarlyStopping(patience=3)
    again.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert again.best == math.inf and again.counter == 0
    for a, b in ((restored, es), (EarlyStopping(3), EarlyStopping(3))):
        a.update(2.1, step=30)
        b.update(2.1, step=30)
    assert restored.state_dict() == es.state_dict()


@pytest.mark.parametrize("patience,min_delta", [(0, 0.0), (2.5, 0.0), (True, 0.0), (3, -0.1)])
def test_early_stopping_rejects_bad_settings(patience, min_delta):
    with pytest.raises(ConfigError):
        EarlyStopping(patience, min_delta)
