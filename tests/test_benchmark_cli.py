"""``python -m benchmarks``: which benchmarks take ``--size``, and what a size means for them."""

from __future__ import annotations

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.model_speed import _plan
from spectral_gpt.config import BATCH_SIZES


def test_size_is_refused_in_one_line_for_a_benchmark_that_has_no_model_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["memory", "--size", "medium"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("--size applies to compile_speedup, linear_attention_scaling, mfu, wave_vs_standard, "
                          "not to memory")


def test_a_size_keeps_its_own_batch_on_a_gpu_and_a_small_one_on_a_cpu():
    assert (_plan(True).size, _plan(False).size) == ("tiny", "small")
    for size in ("medium", "large"):
        plan = _plan(False, size)
        expected = BATCH_SIZES[size] if torch.cuda.is_available() else 8
        assert (plan.size, plan.batch) == (size, expected)
    assert _plan(False, "tiny") == _plan(True)
