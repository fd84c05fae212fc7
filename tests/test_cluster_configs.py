"""The shipped cluster configs parse, carry what Ray/KubeRay require, and their commands parse with our CLI.

No cluster here: the point is that a config we ship cannot rot silently when flags or fields change.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import build_parser, settings_from_args
from orchestrator.sweep_cli import sweep_settings_from_args

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _commands(text: str) -> list[list[str]]:
    """Every `spectral-gpt ...` command in a file (entrypoints and the commented examples)."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)  # shell line continuations, also inside comments
    joined = re.sub(r"\n\s{4,}(--)", r" \1", joined)  # YAML folded entrypoints
    found = re.findall(r"spectral-gpt ((?:train|ablate)\b[^\n#`]*)", joined)
    return [shlex.split(cmd) for cmd in found]


def test_launcher_config_has_what_ray_up_needs():
    config = _load("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    assert config["head_node_type"] in config["available_node_types"]
    for node in config["available_node_types"].values():
        assert {"node_config", "resources"} <= node.keys()
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "~/.ray/auth_token" in config["file_mounts"]


@pytest.mark.parametrize("name,kind", [("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")])
def test_kuberay_manifests_have_token_auth_shared_storage_and_our_ray_version(name, kind):
    manifest = _load(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    spec = manifest["spec"]["rayClusterSpec"] if kind == "RayJob" else manifest["spec"]
    assert spec["rayVersion"] == version("ray")
    assert spec["authOptions"]["mode"] == "token"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert "rayStartParams" in group
        pod = group["template"]["spec"]
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/shared" in mounts
        assert {v["name"] for v in pod["volumes"]} >= {"shared"}
    for worker in spec["workerGroupSpecs"]:
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    if kind == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("spectral-gpt ")
        assert yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"]


def test_runtime_env_values_are_strings():
    env = _load("runtime_env.yaml")["env_vars"]
    assert env and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml",
                                  "README.md"])
def test_every_shipped_command_parses_and_validates(name, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # these commands run as Ray jobs
    commands = _commands((CLUSTER / name).read_text())
    assert commands, f"no spectral-gpt command found in {name}"
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.output.startswith("/mnt/shared/"), argv
        if argv[0] == "train":
            settings = settings_from_args(args, args.experiment, args.name)
            assert settings.scaling.use_gpu
        else:
            sweep = sweep_settings_from_args(args)
            assert sweep.runs and all(run.scaling.use_gpu for run in sweep.runs)
