"""The user-mistake battery: CLI flags, config files, runtime envs and the Python API.

Every mistake must cost one line naming the value and what is allowed (exit code 2 on the command
line, ``ConfigError`` from Python), no traceback, no new file or folder anywhere (the working folder
and the token cache are compared before and after) and no Ray. The tables run in-process for speed
(one torch import for all of them), with a tripwire on ``connect_ray`` (a test session may already
have Ray up, so "not initialised" proves nothing); the subprocess table proves the same contract
end to end, where an untouched ``RAY_TMPDIR`` shows that Ray never started.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
import ray._private.services as ray_services
from runs import driver_env
from test_cli import CLI, ERROR_PREFIX

import orchestrator.run
import orchestrator.sweep
from orchestrator.cli import build_parser, main, settings_from_args
from orchestrator.config_file import parse_args
from orchestrator.monitoring import ConfigTracker
from orchestrator.run import train_experiment
from orchestrator.settings import MonitoringSettings, ScalingSettings, build_run_settings
from spectral_gpt.config import ConfigError

SECRET_LIKE = "s3cr3t-value-never-echoed"
"""A runtime env value that a mistake's message must not repeat (env_vars often carry tokens)."""


def _write_files(root: Path, cache: str) -> None:
    """Everything the tables point at: bad data files, config files, runtime envs, a run folder."""
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("not a folder\n")
    (root / "tiny.txt").write_text("a few words only\n")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    # ~2,200 tokens at vocab 257: enough training windows, too few validation ones for a batch of 16.
    (root / "short.txt").write_text(" ".join(words[(i * 7) % 12] for i in range(400)) + "\n")
    files = {
        "steps_zero.yaml": "steps: 0\n", "steps_text.yaml": "steps: abc\n", "huge.yaml": "model: huge\n",
        "typo.yaml": "stepz: 500\n", "list.yaml": "- steps\n- 500\n", "empty.yaml": "",
        "bad.yaml": "steps: 500\ncheckpoint_interval: [10\n", "bad.json": '{"steps": 500,\n "model": }\n',
        "flag.yaml": "no_monitoring: sometimes\n", "lr.json": '{"lr": -1}', "nested.yaml": "seed: {a: 1}\n",
        "gpu_cpu.yaml": "gpu: true\ncpu: true\n", "twice.yaml": "max-failures: 1\nmax_failures: 2\n",
        "env_list.yaml": "- env_vars\n", "env_field.yaml": "env_vars: {}\nbogus_field: 1\n",
        "env_vars_list.yaml": "env_vars: [HF_TOKEN]\n", "env_vars_int.yaml": "env_vars:\n  RETRIES: 3\n",
        "env_pip.json": '{"pip": 5}', "env_secret.yaml": f"env_vars:\n  HF_TOKEN: {SECRET_LIKE}\nbogus: 1\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    # An unfinished run named "clash" that was started with the small model.
    other = build_run_settings(size="small", name="clash", output=root / "out", cache_dir=cache)
    ConfigTracker(root / "out" / "clash_20250101_000000_abc1234").save_config(other.to_dict())


@pytest.fixture
def workdir(tmp_path: Path, token_cache: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's current folder, holding the files above; the token cache is the session's."""
    _write_files(tmp_path, token_cache)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPECTRAL_GPT_CACHE", token_cache)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A tripwire: a mistake that got as far as connecting to Ray fails the test at that point."""
    calls: list[str] = []

    def tripwire(*args, **kwargs) -> None:
        calls.append("connect_ray")
        raise AssertionError("connect_ray was called: the mistake was not found before Ray")

    monkeypatch.setattr(orchestrator.run, "connect_ray", tripwire)
    monkeypatch.setattr(orchestrator.sweep, "connect_ray", tripwire)
    return calls


def _tree(*roots: Path | str) -> dict[str, int]:
    """Every file and folder under ``roots`` with its size: what a mistake must leave unchanged."""
    found = {}
    for root in map(Path, roots):
        for path in root.rglob("*"):
            found[str(path)] = path.stat().st_size if path.is_file() else -1
    return found


def _assert_one_error_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in stderr


# -- the command line, in-process ------------------------------------------------------------------

CLI_MISTAKES = [
    # flags
    pytest.param(["--experiment", "nope"], "argument --experiment: invalid choice: 'nope'", id="unknown-experiment"),
    pytest.param(["--model", "huge"], "argument --model: invalid choice: 'huge'", id="unknown-model"),
    pytest.param(["--steps", "0"], "argument --steps: '0' must be >= 1", id="steps-0"),
    pytest.param(["--steps", "abc"], "argument --steps: 'abc' is not an integer", id="steps-abc"),
    pytest.param(["--keep-last", "0"], "argument --keep-last: '0' must be >= 1", id="keep-last-0"),
    pytest.param(["--checkpoint-interval", "0"], "argument --checkpoint-interval: '0' must be >= 1",
                 id="checkpoint-interval-0"),
    pytest.param(["--log-interval", "-1"], "argument --log-interval: '-1' must be >= 1", id="log-interval-neg"),
    pytest.param(["--workers", "0"], "argument --workers: '0' must be >= 1", id="workers-0"),
    pytest.param(["--cpus-per-worker", "0"], "argument --cpus-per-worker: '0' must be >= 1", id="cpus-0"),
    pytest.param(["--cpus-per-worker", "100000"], "--workers 1 x --cpus-per-worker 100000 needs 100000 CPUs "
                 "but this machine has", id="cpus-more-than-the-machine"),
    pytest.param(["--workers", "100000", "--batch-size", "100000"], "--workers 100000 needs 100000 CPUs but this "
                 "machine has", id="workers-more-than-the-machine"),
    pytest.param(["--resume", "maybe"], "argument --resume: invalid choice: 'maybe'", id="resume-maybe"),
    pytest.param(["--compile", "fast"], "argument --compile: invalid choice: 'fast'", id="compile-fast"),
    pytest.param(["--seed", "-1"], "seed=-1 must be an integer in [0, 9223372036854775807]", id="seed-negative"),
    pytest.param(["--seed", str(2**64)], f"seed={2**64} must be an integer in [0, 9223372036854775807]",
                 id="seed-beyond-64-bits"),
    pytest.param(["--vocab-size", "10"], "vocab_size=10 must be an integer in [257, 262144]", id="vocab-too-small"),
    pytest.param(["--vocab-size", "100000000"], "vocab_size=100000000 must be an integer in [257, 262144]",
                 id="vocab-too-large"),
    pytest.param(["--lr", "-1"], "lr=-1.0 must be a finite number > 0", id="lr-negative"),
    pytest.param(["--lr", "nan"], "lr=nan must be a finite number > 0", id="lr-nan"),
    pytest.param(["--max-failures", "-5"], "max_failures=-5 must be an integer", id="max-failures-neg"),
    pytest.param(["--workers", "2", "--batch-size", "3"], "batch_size=3 must be divisible by workers=2",
                 id="batch-not-divisible"),
    # names and folders
    pytest.param(["--name", "../escape"], "name='../escape' must be", id="name-dotdot"),
    pytest.param(["--name", "a/b"], "name='a/b' must be", id="name-slash"),
    pytest.param(["--name", ""], "name='' must be", id="name-empty"),
    pytest.param(["--output", "{tmp}/a_file"], "output='{tmp}/a_file' cannot be a folder: '{tmp}/a_file' is a file",
                 id="output-is-a-file"),
    pytest.param(["--output", "{tmp}/a_file/runs"], "cannot be a folder: '{tmp}/a_file' is a file",
                 id="output-below-a-file"),
    pytest.param(["--output", "/proc/spectral-gpt-runs"], "output='/proc/spectral-gpt-runs' is not writable",
                 id="output-not-writable"),
    # data
    pytest.param(["--dataset", "/nonexistent/file.txt"], "dataset file '/nonexistent/file.txt' does not exist",
                 id="dataset-missing"),
    pytest.param(["--dataset", "{tmp}/empty.txt"], "is empty", id="dataset-empty"),
    pytest.param(["--dataset", "{tmp}/latin1.txt"], "is not UTF-8 text", id="dataset-not-utf8"),
    pytest.param(["--dataset", "{tmp}/a_folder"], "is not a regular file", id="dataset-directory"),
    # vocab 257 keeps the tokenizer from also warning that 4 words cannot fill 1024 tokens
    pytest.param(["--dataset", "{tmp}/tiny.txt", "--vocab-size", "257"], "block_size=64 is larger than the data",
                 id="block-larger-than-data"),
    pytest.param(["--dataset", "{tmp}/short.txt", "--vocab-size", "257"],
                 "block_size=64 is larger than the validation data", id="validation-split-too-small"),
    # resume
    pytest.param(["--resume", "must", "--name", "nothing"], "--resume must: no unfinished run named 'nothing'",
                 id="resume-must-no-run"),
    pytest.param(["--resume", "must", "--no-monitoring"], "--resume must needs monitoring", id="resume-must-no-files"),
    # ... found before a corpus not yet in the cache is tokenised into it
    *(pytest.param([*head, "--resume", "must", "--dataset", "{tmp}/short.txt", "--vocab-size", "257",
                    "--batch-size", "2", *tail], expected, id=f"resume-must-before-tokenising-{i}")
      for i, (head, tail, expected) in enumerate([
          ([], [], "--resume must: no unfinished run named"),
          ([], ["--no-monitoring"], "--resume must needs monitoring"),
          (["ablate", "--experiment", "rgd_only"], [], "--resume must: no unfinished sweep named")])),
    pytest.param(["--name", "clash"], "was started with other settings (model.d_model=384 there, 64 now)",
                 id="resume-other-model"),
    # config files (--config)
    pytest.param(["--config", "{tmp}/missing.yaml"], "config file '{tmp}/missing.yaml' does not exist",
                 id="config-missing"),
    pytest.param(["--config", "{tmp}/a_folder"], "is a folder, not a file", id="config-folder"),
    pytest.param(["--config", "{tmp}/latin1.yaml"], "is not UTF-8 text (byte 0xe9 at offset 9)", id="config-not-utf8"),
    pytest.param(["--config", "{tmp}/empty.yaml"], "config file '{tmp}/empty.yaml' is empty", id="config-empty"),
    pytest.param(["--config", "{tmp}/bad.yaml"], "config file '{tmp}/bad.yaml' line 3: invalid YAML",
                 id="config-invalid-yaml"),
    pytest.param(["--config", "{tmp}/bad.json"], "config file '{tmp}/bad.json' line 2: invalid JSON (Expecting value)",
                 id="config-invalid-json"),
    pytest.param(["--config", "{tmp}/list.yaml"], "holds a list, not a mapping", id="config-not-a-mapping"),
    pytest.param(["--config", "{tmp}/typo.yaml"], "unknown key 'stepz'; allowed: batch-size, checkpoint-interval,",
                 id="config-unknown-key"),
    pytest.param(["--config", "{tmp}/steps_text.yaml"], "steps: 'abc' is not an integer", id="config-wrong-type"),
    pytest.param(["--config", "{tmp}/steps_zero.yaml"], "steps: '0' must be >= 1", id="config-steps-0"),
    pytest.param(["--config", "{tmp}/huge.yaml"], "model='huge' is not one of: tiny, small, medium, large",
                 id="config-unknown-model"),
    pytest.param(["--config", "{tmp}/flag.yaml"], "no-monitoring='sometimes' must be true or false",
                 id="config-flag-not-bool"),
    pytest.param(["--config", "{tmp}/nested.yaml"], "seed={{'a': 1}} must be a single value, not a dict",
                 id="config-nested-value"),
    pytest.param(["--config", "{tmp}/gpu_cpu.yaml"], "'gpu' and 'cpu' both set gpu; keep one", id="config-gpu-and-cpu"),
    pytest.param(["--config", "{tmp}/twice.yaml"], "'max-failures' and 'max_failures' both set max_failures; keep one",
                 id="config-one-flag-twice"),
    pytest.param(["--config", "{tmp}/lr.json"], "lr=-1.0 must be a finite number > 0", id="config-lr-negative"),
    # runtime envs (--runtime-env)
    pytest.param(["--runtime-env", "{tmp}/nope.yaml"], "runtime env '{tmp}/nope.yaml' does not exist",
                 id="runtime-env-missing"),
    pytest.param(["--runtime-env", "{tmp}/env_list.yaml"], "holds a list, not a mapping", id="runtime-env-list"),
    pytest.param(["--runtime-env", "{tmp}/env_field.yaml"], "unknown field 'bogus_field'; allowed: conda, config,",
                 id="runtime-env-unknown-field"),
    pytest.param(["--runtime-env", "{tmp}/env_vars_list.yaml"], "env_vars must map names to strings, not a list",
                 id="runtime-env-vars-list"),
    pytest.param(["--runtime-env", "{tmp}/env_vars_int.yaml"], "env_vars['RETRIES'] must be a string name with a "
                 "string value (quote numbers and booleans), not int", id="runtime-env-vars-int"),
    pytest.param(["--runtime-env", "{tmp}/env_pip.json"], "runtime_env['pip'] must be of type str or List[str]",
                 id="runtime-env-pip-int"),
    # sweeps
    pytest.param(["ablate", "--experiment", "rgd_only", "nope"], "unknown ablation 'nope'; allowed: all,",
                 id="ablate-unknown-ablation"),
    pytest.param(["ablate", "--seeds", "0"], "seeds=0 must be an integer >= 1", id="ablate-seeds-0"),
    pytest.param(["ablate", "--seeds", "100000000"], "seeds=100000000 gives 900000000 trials (9 ablations x "
                 "100000000 seeds); a sweep holds at most 10000", id="ablate-seeds-huge"),
    pytest.param(["ablate", "--max-concurrent", "4096"], "max_concurrent=4096 needs 4096 CPUs",
                 id="ablate-too-concurrent"),
    pytest.param(["ablate", "--no-monitoring"], "a sweep needs monitoring", id="ablate-no-monitoring"),
    pytest.param(["ablate", "--config", "{tmp}/huge.yaml"], "model='huge' is not one of", id="ablate-config"),
    pytest.param(["ablate", "--experiment", "rgd_only", "--output", "{tmp}/a_file"],
                 "output='{tmp}/a_file' cannot be a folder", id="ablate-output-is-a-file"),
    pytest.param(["--output", ""], "output='' is empty; give a folder", id="output-empty"),
    pytest.param(["ablate", "--output", "{tmp}/" + "x" * 300], "(File name too long)", id="ablate-output-too-long"),
    pytest.param(["--dataset", "{tmp}/" + "x" * 300 + ".txt"], "cannot be opened (File name too long)",
                 id="dataset-name-too-long"),
    pytest.param(["ablate", "--output", " "], "output=' ' is empty; give a folder", id="ablate-output-empty"),
]


@pytest.mark.parametrize("argv, expected", CLI_MISTAKES)
def test_a_cli_mistake_is_one_line_exit_2_no_files_no_ray(argv, expected, workdir, token_cache, no_ray, capsys):
    argv = [a.format(tmp=workdir) for a in argv]
    command = [] if argv[0] == "ablate" else ["train"]
    output = [] if "--output" in argv else ["--output", str(workdir / "out")]
    before = _tree(workdir, token_cache)
    with pytest.raises(SystemExit) as exc:
        main([*command, *argv, *output])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    _assert_one_error_line(captured.err, expected.format(tmp=workdir))
    assert captured.out == "", "a progress bar, a blank line or other output for a run that never started"
    assert _tree(workdir, token_cache) == before, "the mistake left files behind"
    assert no_ray == []


def _no_ray_on_this_node(address: str, temp_dir: str | None = None) -> str:
    raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                          "setting `--address` flag or `RAY_ADDRESS` environment variable.")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


@pytest.mark.parametrize("address, expected", [
    ("http://127.0.0.1:8265", "RAY_ADDRESS='http://127.0.0.1:8265' is a dashboard address, the one `ray job "
                              "submit --address` takes"),
    ("not a host", "RAY_ADDRESS='not a host' is not host:port, ray://host:port, 'auto' or 'local'"),
    ("127.0.0.1:{port}", "RAY_ADDRESS='127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port} "
                         "(Connection refused)"),
    ("auto", "RAY_ADDRESS='auto': Could not find any running Ray instance."),
], ids=["dashboard-url", "not-an-address", "nobody-listens", "auto-without-a-cluster"])
@pytest.mark.parametrize("command", ["train", "ablate"])
def test_a_ray_address_that_is_no_cluster_is_one_line_before_any_file(address, expected, command, workdir,
                                                                      token_cache, no_ray, capsys, monkeypatch):
    """The dashboard URL (what ``ray job submit --address`` takes) set as RAY_ADDRESS, a typo, a cluster
    that is down, ``auto`` on a node where ``ray start`` never ran: Ray answered with a traceback, or with
    minutes of retries, after tokenising (and, for ``auto``, after making the sweep's folder). As in a
    fresh command, this process has not joined Ray (the test session's own instance is hidden)."""
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", address.format(port=port))
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    # Ray's 'auto' lookup also finds any Ray running on the machine, as the test session's own: here it
    # answers as Ray 2.60 does on a node where no Ray runs.
    monkeypatch.setattr(ray_services, "canonicalize_bootstrap_address", _no_ray_on_this_node)
    before = _tree(workdir, token_cache)
    with pytest.raises(SystemExit) as exc:
        main([command, "--dataset", str(workdir / "short.txt"), "--output", str(workdir / "out")])
    assert exc.value.code == 2
    _assert_one_error_line(capsys.readouterr().err, expected.format(port=port))
    assert _tree(workdir, token_cache) == before and no_ray == []


def test_a_process_that_joined_ray_itself_is_not_refused_for_its_ray_address(monkeypatch):
    """A notebook with the dashboard URL exported for ``ray job submit`` that called ``ray.init`` itself:
    the run uses that Ray (connect_ray does), so RAY_ADDRESS is not checked."""
    from orchestrator.settings import check_cluster_address

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setattr("ray.is_initialized", lambda: True)
    check_cluster_address()
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    with pytest.raises(ConfigError, match="is a dashboard address"):
        check_cluster_address()


def test_a_home_relative_output_in_a_config_file_is_expanded_as_the_shell_expands_a_flag(workdir, monkeypatch):
    """``output: ~/runs`` in a config file reaches us unexpanded (no shell between): it made ``./~/runs``."""
    monkeypatch.setenv("HOME", str(workdir / "home"))
    (workdir / "home.yaml").write_text("output: ~/runs\n")
    for argv in (["train", "--config", "home.yaml"], ["train", "--output", "~/runs"]):
        args = parse_args(build_parser(), argv)
        assert settings_from_args(args, args.experiment, None).output == str(workdir / "home" / "runs")


def test_a_runtime_env_mistake_never_echoes_an_env_value(workdir, no_ray, capsys):
    """env_vars carry tokens: the message names the file and the field, never a value."""
    with pytest.raises(SystemExit):
        main(["train", "--runtime-env", str(workdir / "env_secret.yaml")])
    err = capsys.readouterr().err
    assert "unknown field 'bogus'" in err and SECRET_LIKE not in err


# -- config files that work --------------------------------------------------------------------------

def test_a_config_file_gives_defaults_and_command_line_flags_win(workdir):
    (workdir / "run.yaml").write_text("steps: 40\ncheckpoint_interval: 20\nmodel: small\nno-monitoring: true\n"
                                      "lr: 1e-3\nseed: null\n")
    (workdir / "env.json").write_text(json.dumps({"env_vars": {"OMP_NUM_THREADS": "2"}}))
    for argv in (["train", "--config", "run.yaml", "--steps", "60", "--runtime-env", "env.json"],
                 ["train", "--steps", "60", "--runtime-env", "env.json", "--config", "run.yaml"]):
        args = parse_args(build_parser(), argv)
        assert (args.steps, args.checkpoint_interval, args.model) == (60, 20, "small")
        assert args.no_monitoring is True and args.lr == 1e-3 and args.seed == 1337  # null keeps the default
        assert args.runtime_env == {"env_vars": {"OMP_NUM_THREADS": "2"}}
    (workdir / "sweep.json").write_text(json.dumps({"experiment": ["rgd_only", "qfe_only"], "seeds": 2}))
    args = parse_args(build_parser(), ["ablate", "--config", "sweep.json"])
    assert args.experiment == ["rgd_only", "qfe_only"] and args.seeds == 2 and args.steps == 10000
    assert parse_args(build_parser(), ["train"]).steps == 500  # a config of another parse does not linger


# -- the Python API ------------------------------------------------------------------------------------

API_MISTAKES = [
    pytest.param({"experiment": "nope"}, "unknown ablation 'nope'; allowed:", id="api-unknown-ablation"),
    pytest.param({"model": "huge"}, "unknown model size 'huge'; allowed: tiny, small", id="api-unknown-size"),
    pytest.param({"steps": "10"}, "steps='10' must be an integer >= 1", id="api-steps-text"),
    pytest.param({"steps": 0}, "steps=0 must be an integer >= 1", id="api-steps-0"),
    pytest.param({"batch_size": 0}, "batch_size=0 must be an integer >= 1", id="api-batch-0"),
    pytest.param({"eval_interval": 0}, "eval_interval=0 must be an integer >= 1", id="api-eval-interval-0"),
    pytest.param({"name": ""}, "name='' must be", id="api-name-empty"),
    pytest.param({"name": "x/../../y"}, "name='x/../../y' must be", id="api-name-escape"),
    pytest.param({"lr": "fast"}, "lr='fast' must be a finite number > 0", id="api-lr-text"),
    pytest.param({"warmup": 10}, "unknown experiment setting(s) warmup; allowed:", id="api-unknown-setting"),
    pytest.param({"experiment_dir": "{tmp}/a_file"}, "output='{tmp}/a_file' cannot be a folder", id="api-output-file"),
    pytest.param({"cache_dir": "{tmp}/a_file/cache"}, "cache_dir='{tmp}/a_file/cache' cannot be a folder",
                 id="api-cache-below-file"),
    pytest.param({"dataset": "{tmp}/latin1.txt"}, "is not UTF-8 text", id="api-dataset-not-utf8"),
    pytest.param({"enable_monitoring": False, "resume": "must"}, "--resume must needs monitoring",
                 id="api-resume-must-no-monitoring"),
    # wrong types: each was a raw TypeError or AttributeError, or silently meant something else
    pytest.param({"experiment": []}, "unknown ablation []; allowed:", id="api-ablation-a-list"),
    pytest.param({"model": ["tiny"]}, "unknown model size ['tiny']; allowed:", id="api-size-a-list"),
    pytest.param({"name": 5}, "name=5 must be", id="api-name-a-number"),
    pytest.param({"dataset": 5}, "dataset=5 must be a corpus name or the path of a text file", id="api-dataset-int"),
    pytest.param({"experiment_dir": 5}, "output=5 must be a folder or a storage URI", id="api-output-int"),
    pytest.param({"monitoring": {"keep_last": 1}}, "monitoring={{'keep_last': 1}} must be a MonitoringSettings",
                 id="api-monitoring-a-dict"),
    pytest.param({"scaling": {"workers": 2}}, "scaling={{'workers': 2}} must be a ScalingSettings",
                 id="api-scaling-a-dict"),
    pytest.param({"enable_monitoring": "no"}, "enabled='no' must be True or False", id="api-monitoring-text"),
    pytest.param({"wave_ratio_schedule": "no"}, "wave_ratio_schedule='no' must be True or False",
                 id="api-bool-setting-text"),
]


@pytest.mark.parametrize("kwargs, expected", API_MISTAKES)
def test_an_api_mistake_is_a_one_line_config_error_with_no_files_and_no_ray(kwargs, expected, workdir, token_cache,
                                                                             no_ray):
    kwargs = {k: v.format(tmp=workdir) if isinstance(v, str) else v for k, v in kwargs.items()}
    args = [kwargs.pop("experiment", "wave_baseline"), kwargs.pop("model", "tiny"), kwargs.pop("steps", 20)]
    kwargs.setdefault("experiment_dir", workdir / "out")
    kwargs.setdefault("cache_dir", token_cache)
    before = _tree(workdir, token_cache)
    with pytest.raises(ConfigError) as exc:
        train_experiment(*args, **kwargs)
    message = str(exc.value)
    assert "\n" not in message and expected.format(tmp=workdir) in message, message
    assert _tree(workdir, token_cache) == before, "the mistake left files behind"
    assert no_ray == []


def test_the_tripwire_stops_a_valid_run_at_ray(workdir, token_cache, no_ray):
    """The control of the tables above: valid settings do get as far as connecting to Ray."""
    with pytest.raises(AssertionError, match="connect_ray was called"):
        train_experiment("wave_baseline", "tiny", 20, experiment_dir=workdir / "out", cache_dir=token_cache)
    assert no_ray == ["connect_ray"]


@pytest.mark.parametrize("make, expected", [
    (lambda: MonitoringSettings(keep_last=0), "keep_last=0 must be an integer >= 1"),
    (lambda: MonitoringSettings(viz_interval=2.5), "viz_interval=2.5 must be an integer >= 1"),
    (lambda: ScalingSettings(workers=0), "workers=0 must be an integer >= 1"),
    (lambda: ScalingSettings(max_failures=-2), "max_failures=-2 must be an integer >= -1"),
    (lambda: ScalingSettings(cpus_per_worker=0), "cpus_per_worker=0 must be an integer >= 1"),
    (lambda: ScalingSettings(use_gpu="yes"), "use_gpu='yes' must be True or False"),
    (lambda: MonitoringSettings(enabled="no"), "enabled='no' must be True or False"),
], ids=["keep-last-0", "viz-interval-float", "workers-0", "max-failures-neg", "cpus-per-worker-0", "use-gpu-text",
        "enabled-text"])
def test_settings_objects_refuse_bad_values_naming_them(make, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        make()


def test_more_gpu_workers_than_local_gpus_is_refused(monkeypatch):
    """Stand-in for a one-GPU machine (none exists here): torch reports CUDA with one device."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert build_run_settings(scaling=ScalingSettings(workers=1, use_gpu=True)).scaling.use_gpu
    with pytest.raises(ConfigError, match=re.escape("--workers 2 with --gpu needs 2 GPUs (one per worker), "
                                                    "but this machine has 1; use --workers 1 or fewer")):
        build_run_settings(scaling=ScalingSettings(workers=2, use_gpu=True))
    monkeypatch.setenv("RAY_ADDRESS", "ray://gpu-cluster:10001")  # a cluster's GPUs are its own business
    assert build_run_settings(scaling=ScalingSettings(workers=2, use_gpu=True)).scaling.workers == 2


# -- end to end, as a process -------------------------------------------------------------------------

SUBPROCESS_MISTAKES = [
    # argparse layer, through the default command (no "train"): our parser prints no usage block.
    pytest.param(["--steps", "abc"], {}, "argument --steps: 'abc' is not an integer", id="argparse-steps-abc"),
    # settings layer: no CUDA here (and none visible), no cluster to join -> Ray would wait forever.
    pytest.param(["train", "--gpu"], {"CUDA_VISIBLE_DEVICES": ""}, "--gpu (use_gpu=True) needs a CUDA GPU",
                 id="gpu-without-cuda"),
    # the config file layer, inside argparse
    pytest.param(["train", "--config", "bad.yaml"], {}, "config file 'bad.yaml' line 3: invalid YAML",
                 id="config-invalid-yaml"),
    # the runtime env loader imports ray: it must still not start it
    pytest.param(["ablate", "--runtime-env", "env_field.yaml"], {}, "unknown field 'bogus_field'",
                 id="runtime-env-unknown-field"),
]


@pytest.mark.parametrize("argv, extra_env, expected", SUBPROCESS_MISTAKES)
def test_a_mistake_fails_end_to_end_with_exit_2_one_line_and_no_ray(argv, extra_env, expected, workdir, token_cache):
    """The real process: exit status, the bytes on stderr, no new files and an untouched Ray temp dir
    (inside the compared tree; a Ray that started would have made its session folder there)."""
    ray_tmp = workdir / "ray"
    ray_tmp.mkdir()
    before = _tree(workdir, token_cache)
    proc = subprocess.run([*CLI, *argv, "--output", str(workdir / "out")],
                          env=driver_env(token_cache, ray_tmp, **extra_env), cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_error_line(proc.stderr, expected)
    assert proc.stdout == ""
    assert _tree(workdir, token_cache) == before, "the mistake left files behind"
    assert list(ray_tmp.iterdir()) == [], "Ray started before the mistake was found"
