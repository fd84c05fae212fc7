"""The seed's MONITORING_QUICK_START.md snippets, run as written against a folder our classes produced.

The snippets say ``from monitoring import ...`` (the original module sat next to the scripts), and the
installed package answers to that name; the subprocess that runs them changes nothing but the
``{exp_id}`` placeholder, which a user fills in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from orchestrator.monitoring import (
    CheckpointManager,
    ConfigTracker,
    MetricsLogger,
    VisualizationManager,
    create_experiment_directory,
    generate_experiment_id,
)

REPO = Path(__file__).resolve().parents[1]
SEED_DOC = REPO.parent / "shared" / "seed" / "MONITORING_QUICK_START.md"

SNIPPETS = {
    "Loading Metrics": """\
from monitoring import MetricsLogger

logger = MetricsLogger('experiments/{exp_id}/logs')
metrics = logger.load_metrics()

# Get summary statistics
summary = logger.get_metrics_summary()
print(summary)
""",
    "Loading Checkpoints": """\
from monitoring import CheckpointManager

manager = CheckpointManager('experiments/{exp_id}')

# Load latest checkpoint
checkpoint = manager.load_latest_checkpoint()

# Load specific checkpoint
checkpoint = manager.load_checkpoint(step=5000)

# List all checkpoints
checkpoints = manager.list_checkpoints()
""",
    "Loading Configuration": """\
from monitoring import ConfigTracker

tracker = ConfigTracker('experiments/{exp_id}')
config = tracker.load_config()
print(config)
""",
    "Reduce checkpoint retention": """\
CheckpointManager(experiment_dir, save_interval=1000, keep_last_n=1)
""",
    "Increase checkpoint interval": """\
CheckpointManager(experiment_dir, save_interval=2000, keep_last_n=3)
""",
    "Custom Monitoring Intervals": """\
# More frequent monitoring for debugging
checkpoint_manager = CheckpointManager(exp_dir, save_interval=100, keep_last_n=5)
metrics_logger = MetricsLogger(log_dir, log_interval=1)
viz_manager = VisualizationManager(viz_dir, viz_interval=100)
""",
    "Comparing Experiments": """\
from monitoring import MetricsLogger
import matplotlib.pyplot as plt

# Load metrics from multiple experiments
exp1_metrics = MetricsLogger('experiments/exp1/logs').load_metrics()
exp2_metrics = MetricsLogger('experiments/exp2/logs').load_metrics()

# Plot comparison
plt.plot([m['loss'] for m in exp1_metrics], label='Exp 1')
plt.plot([m['loss'] for m in exp2_metrics], label='Exp 2')
plt.legend()
plt.show()
""",
}

# What the training script around a snippet would have defined (the seed shows these lines in context).
_CHECKPOINT_CONTEXT = "from monitoring import CheckpointManager\nexperiment_dir = 'experiments/{exp_id}'\n"
CONTEXT = {
    "Reduce checkpoint retention": _CHECKPOINT_CONTEXT,
    "Increase checkpoint interval": _CHECKPOINT_CONTEXT,
    "Custom Monitoring Intervals": (
        "from monitoring import CheckpointManager, MetricsLogger, VisualizationManager\n"
        "exp_dir = 'experiments/{exp_id}'\n"
        "log_dir = exp_dir + '/logs'\n"
        "viz_dir = exp_dir + '/visualizations'\n"
    ),
}

# Read back what each snippet produced, so the test checks values and not just "no exception".
PROBES = {
    "Loading Metrics": "RESULT = {'steps': [m['step'] for m in metrics], 'summary': summary}",
    "Loading Checkpoints": "RESULT = {'step': checkpoint['step'], 'listed': [c['step'] for c in checkpoints],"
                           " 'best': [c['step'] for c in checkpoints if c['is_best']]}",
    "Loading Configuration": "RESULT = {'keys': sorted(config), 'model': config['model']['type']}",
    "Reduce checkpoint retention": "RESULT = {}",
    "Increase checkpoint interval": "RESULT = {}",
    "Custom Monitoring Intervals": "RESULT = {'intervals': [checkpoint_manager.save_interval,"
                                   " metrics_logger.log_interval, viz_manager.viz_interval]}",
    "Comparing Experiments": "RESULT = {'lines': [len(l.get_ydata()) for l in plt.gca().get_lines()]}",
}

_RUNNER = textwrap.dedent("""
    import json, sys, traceback
    import monitoring
    imported = {m: m in sys.modules for m in ("ray", "spectral_gpt", "matplotlib.pyplot")}
    snippets = json.loads(open(sys.argv[1]).read())
    results = {"imported by the library": {"ok": True, "result": imported}}
    for name, code in snippets.items():
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(code, name, "exec"), namespace)
            results[name] = {"ok": True, "result": namespace["RESULT"]}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
    open(sys.argv[2], "w").write(json.dumps(results, default=str))
""")


def _log_rows(logger: MetricsLogger, offset: float) -> None:
    for step in range(100, 5001, 100):
        loss = 6.0 - step / 2000 + offset
        row = {"loss": loss, "learning_rate": 6e-4, "tokens_per_sec": 1500.0,
               "wave_ratio": 0.5 + step / 10000, "coherence_loss": 0.01, "perplexity": math.exp(loss),
               "grad_norm": 0.8, "memory_mb": 300.0}
        if step % 1000 == 0:
            row |= {"val_loss": loss + 0.1, "val_perplexity": math.exp(loss + 0.1)}
        logger.log_metrics(step, row)


def _fake_run(base: Path) -> str:
    """A short run as the monitoring actor would write it: config, 50 rows, 4 checkpoints, plots, results."""
    from spectral_gpt.config import TrainConfig, get_ablation, model_config_for
    from spectral_gpt.training import RunSpec, TrainState

    experiment_id = generate_experiment_id("wave_baseline", base_dir=base)
    dirs = create_experiment_directory(base, experiment_id)
    spec = RunSpec(model_config_for("tiny", "wave_baseline", vocab_size=600), get_ablation("wave_baseline"),
                   TrainConfig(steps=5000))
    state = TrainState(spec)
    ConfigTracker(dirs["root"]).save_config(spec.to_dict(), model=state.model,
                                            dataset_info={"train_tokens": 90_000, "val_tokens": 10_000})
    with MetricsLogger(dirs["logs"]) as logger:
        _log_rows(logger, 0.0)
        rows = logger.load_metrics()
    manager = CheckpointManager(dirs["root"], save_interval=1000, keep_last_n=3)
    for step, val_loss in [(2000, 5.2), (3000, 4.9), (4000, 4.8), (5000, 4.6)]:
        state.step = step
        with torch.no_grad():
            state.model.embedding.base_freqs.mul_(1.01)
        manager.save_checkpoint(step, state=state.state_dict(), config=spec.to_dict(), val_loss=val_loss)
    viz = VisualizationManager(dirs["visualizations"], viz_interval=1000)
    viz.generate_training_plots(5000, rows)
    viz.generate_model_plots(5000, state.model)
    ConfigTracker(dirs["root"]).save_results({"val_loss": 4.6}, best_checkpoint=manager.best_checkpoint(),
                                             generation_samples=["the quick"])
    for name, offset in (("exp1", 0.0), ("exp2", 0.3)):
        with MetricsLogger(create_experiment_directory(base, name)["logs"]) as logger:
            _log_rows(logger, offset)
    return experiment_id


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seed")
    experiment_id = _fake_run(workdir / "experiments")
    return workdir, experiment_id


def test_run_folder_has_the_seed_layout(seed_run):
    workdir, experiment_id = seed_run
    assert re.fullmatch(r"wave_baseline_\d{8}_\d{6}_([0-9a-f]{7,}|unknown)", experiment_id)
    root = workdir / "experiments" / experiment_id
    for rel in ("config.json", "results.json", "logs/metrics.jsonl", "logs/training.log",
                "logs/metrics.parquet", "checkpoints/checkpoint_latest.pt", "checkpoints/manifest.json",
                "visualizations/training_dynamics_step_5000.png", "visualizations/frequencies_step_5000.png",
                "visualizations/phases_step_5000.png", "visualizations/harmonics_step_5000.png",
                "visualizations/wave_packets_step_5000.png"):
        assert (root / rel).is_file(), rel
    assert sorted(p.name for p in (root / "checkpoints").glob("checkpoint_step_*.pt")) == [
        "checkpoint_step_3000.pt", "checkpoint_step_4000.pt", "checkpoint_step_5000.pt"]
    results = json.loads((root / "results.json").read_text())
    assert results["best_checkpoint"].endswith("checkpoint_step_5000.pt")


def test_seed_snippets_run_as_written(seed_run, tmp_path):
    workdir, experiment_id = seed_run
    run_root = workdir / "experiments" / experiment_id
    before = _tree_digest(run_root)
    programs = {name: (CONTEXT.get(name, "") + code + PROBES[name]).replace("{exp_id}", experiment_id)
                for name, code in SNIPPETS.items()}
    (tmp_path / "snippets.json").write_text(json.dumps(programs))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(tmp_path / "snippets.json"),
                           str(tmp_path / "results.json")], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed, failed

    metrics = results["Loading Metrics"]["result"]
    assert metrics["steps"] == list(range(100, 5001, 100))
    assert metrics["summary"]["total_steps"] == 50
    assert metrics["summary"]["val_loss_final"] == pytest.approx(3.6)
    checkpoints = results["Loading Checkpoints"]["result"]
    assert checkpoints == {"step": 5000, "listed": [3000, 4000, 5000], "best": [5000]}
    config = results["Loading Configuration"]["result"]
    assert {"config", "dataset", "git", "git_hash", "hardware", "model"} <= set(config["keys"])
    assert config["model"] == "WaveGPT"
    assert results["Custom Monitoring Intervals"]["result"] == {"intervals": [100, 1, 100]}
    assert results["Comparing Experiments"]["result"] == {"lines": [50, 50]}
    assert results["imported by the library"]["result"] == {
        "ray": False, "spectral_gpt": False, "matplotlib.pyplot": False}
    assert "'loss_min'" in done.stdout and "'experiment_id'" in done.stdout
    assert _tree_digest(run_root) == before, "reading a run must not change its files"


def test_the_seed_import_name_is_the_library_itself_with_no_copy_of_its_modules():
    """``monitoring`` hands out the library's own objects (isinstance and monkeypatching keep working)
    and, like the seed's single module, has no submodules that Python could load a second time."""
    import importlib

    import monitoring
    import orchestrator.monitoring as library

    assert all(getattr(monitoring, name) is getattr(library, name) for name in library.__all__)
    assert sorted(dir(monitoring)) == sorted(library.__all__)
    with pytest.raises(ModuleNotFoundError, match="'monitoring' is not a package"):
        importlib.import_module("monitoring.checkpoints")
    with pytest.raises(AttributeError):
        monitoring.no_such_name  # noqa: B018


def test_embedded_snippets_match_the_seed_document():
    assert SEED_DOC.exists(), f"the seed document is expected beside the checkout at {SEED_DOC}"
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", SEED_DOC.read_text(), re.S)]
    blocks = [re.sub(r"(?m)^ {3}", "", b) for b in blocks]
    for name, code in SNIPPETS.items():
        assert any(code.strip() == b.strip() for b in blocks), name
