"""The docs/benchmarks.md generator: table rows, goal evaluation and refusal of foreign files (tier 0)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.common import load_benchmarks, result
from benchmarks.orchestration import two_standard_errors
from benchmarks.report import goal_met, main, verdict


def _write(folder, res):
    (folder / f"{res['name']}.json").write_text(json.dumps(res))


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    # ratio 0.99 meets ">= 0.97" (a bare number bounds the ratio)
    _write(folder, result("orchestration_overhead", 990.0, "tokens/s", 1000.0, ">= 0.97", steps=1000))
    # value 12.5 s misses "<= 10 s" (a unit bounds the value), although its ratio 1.67 is below 10
    _write(folder, result("recovery_time", 12.5, "s", 7.5, "<= 10 s", note="two workers"))
    _write(folder, result("mfu", 0.07, "fraction of peak", 0.115, "report",
                          models={"wave_baseline": {"mfu": 0.07}, "standard_transformer": {"mfu": 0.115}}))
    return folder


def test_page_has_one_row_per_result_with_its_goal_verdict(results_dir, tmp_path):
    out = tmp_path / "docs" / "benchmarks.md"
    assert main([str(results_dir), "-o", str(out)]) == 0
    page = out.read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `mfu` | 0.07 fraction of peak | 0.115 | 0.6087 | report | — |",
        "| `orchestration_overhead` | 990 tokens/s | 1,000 | 0.99 | >= 0.97 | yes |",
        "| `recovery_time` | 12.5 s | 7.5 | 1.667 | <= 10 s | **no** |",
    ]
    assert "  - wave_baseline: mfu 0.07" in page
    assert "- note: two workers" in page
    # what each benchmark measures comes from the registered benchmark's docstring
    assert load_benchmarks()["recovery_time"].__doc__.splitlines()[0] in page
    assert "python -m benchmarks.report results -o docs/benchmarks.md" in page


@pytest.mark.parametrize("goal, value, ratio, met", [
    (">= 0.7", 10.0, 0.7, True), (">= 0.7", 10.0, 0.69, False), ("<= 1.05", 5.0, 1.06, False),
    ("<= 120 s", 119.0, 0.99, True), ("<= 120 s", 121.0, 1.01, False), ("report", 1.0, 1.0, None),
    (">= 0.97", 1.0, None, None), ("<= 1.5", 1.0, float("nan"), None),
])
def test_goal_bounds_the_ratio_unless_it_names_a_unit(goal, value, ratio, met):
    assert goal_met({"goal": goal, "value": value, "ratio": ratio}) is met


@pytest.mark.parametrize("ratio, interval, cell", [
    (0.94, [0.88, 1.0], "not settled (0.88-1)"), (0.94, [0.92, 0.96], "**no**"), (1.0, [0.995, 1.005], "yes"),
    (0.94, None, "**no**"),
])
def test_a_goal_inside_the_ratios_interval_is_not_settled(ratio, interval, cell):
    res = result("monitoring_overhead", ratio, "tokens/s", 1.0, ">= 0.99",
                 **({"ratio_interval": interval} if interval else {}))
    assert verdict(res) == cell


def test_the_interval_brackets_the_geometric_mean_and_narrows_with_agreeing_pairs():
    wide, narrow = two_standard_errors([0.85, 0.95, 1.05]), two_standard_errors([0.94, 0.95, 0.96])
    centre = math.exp(sum(map(math.log, [0.85, 0.95, 1.05])) / 3)
    assert wide[0] < centre < wide[1]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_a_folder_without_benchmark_results_is_refused(tmp_path, capsys):
    (tmp_path / "other.json").write_text(json.dumps({"name": "x"}))
    assert main([str(tmp_path)]) == 2
    assert "other.json: not a benchmark result (missing value" in capsys.readouterr().err
    (tmp_path / "other.json").unlink()
    assert main([str(tmp_path)]) == 2


def test_one_section_per_machine_folder(results_dir, tmp_path):
    gpu = tmp_path / "h200"
    gpu.mkdir()
    res = result("mfu", 0.014, "fraction of peak", 0.026, "report", precision="bf16")
    res["machine"]["cuda"] = "NVIDIA H200"
    _write(gpu, res)
    out = tmp_path / "page.md"
    assert main([str(results_dir), str(gpu), "-o", str(out)]) == 0
    page = out.read_text()
    sections = [line for line in page.splitlines() if line.startswith("## Results on")]
    assert sections == ["## Results on results (CPU)", "## Results on h200 (NVIDIA H200)"]
    gpu_part = page.split("## Results on h200")[1]
    assert "| `mfu` | 0.014 fraction of peak | 0.026 |" in gpu_part and "- precision: bf16" in gpu_part
    description = load_benchmarks()["mfu"].__doc__.splitlines()[0]
    assert page.count(description) == 1  # said once, at the benchmark's first appearance
    assert "python -m benchmarks.report results h200 -o docs/benchmarks.md" in page
