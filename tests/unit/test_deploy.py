"""The deployment files parse and reference only things that exist.

No container engine runs here, so these checks are static: every YAML file
loads, the compose services and Kubernetes objects have the structure their
runtimes require, and every module, file and command they name is real.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD_UNIT = DEPLOY / "systemd" / "snakepit-worker.service"
SNAKEPIT_COMMANDS = {
    "status",
    "hardware",
    "breakers",
    "taints",
    "untaint",
    "reset",
    "lock",
    "metrics",
    "worker",
    "ping",
}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _k8s_documents() if d["kind"] in {"Deployment", "DaemonSet"}]


def _argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _assert_celery_argv_is_real(argv: list[str]) -> None:
    """A `celery -A module ...` command names a module file of this repository."""
    assert argv[0] == "celery", argv
    app = argv[argv.index("-A") + 1]
    module = app.split(":")[0]
    path = ROOT.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module
    if "snakepit" in argv:
        sub = argv[argv.index("snakepit") + 1]
        assert sub in SNAKEPIT_COMMANDS, sub


def _all_commands() -> list[list[str]]:
    """Every celery command line in compose, Kubernetes and systemd."""
    commands = []
    for service in _compose()["services"].values():
        if "command" in service and _argv(service["command"])[0] == "celery":
            commands.append(_argv(service["command"]))
        test = service.get("healthcheck", {}).get("test", [])
        if len(test) > 1 and test[1] == "celery":
            commands.append(_argv(test[1:]))
    for workload in _workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for key in ("command", "args"):
                if key in container and container[key][0] == "celery":
                    commands.append(_argv(container[key]))
            for probe in ("livenessProbe", "readinessProbe"):
                exec_ = container.get(probe, {}).get("exec")
                if exec_ and exec_["command"][0] == "celery":
                    commands.append(_argv(exec_["command"]))
    return commands


# -- docker-compose.yml --------------------------------------------------------


def test_compose_has_redis_flower_and_cpu_and_gpu_workers() -> None:
    services = _compose()["services"]
    assert {"redis", "flower", "worker-cpu", "worker-gpu"} <= set(services)


def test_every_compose_service_has_a_healthcheck() -> None:
    for name, service in _compose()["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, name


def test_compose_gpu_worker_reserves_nvidia_gpus() -> None:
    gpu = _compose()["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_gpu_worker_runs_one_node_per_device() -> None:
    argv = _argv(_compose()["services"]["worker-gpu"]["command"])
    assert argv[argv.index("snakepit") :][:3] == ["snakepit", "worker", "--per-device"]


def test_compose_builds_the_projects_dockerfile() -> None:
    for name, service in _compose()["services"].items():
        if "build" in service:
            build = service["build"]
            context = ROOT / build["context"]
            assert (context / build["dockerfile"]) == DOCKERFILE, name


def test_compose_workers_wait_for_a_healthy_redis() -> None:
    services = _compose()["services"]
    for name in ("worker-cpu", "worker-gpu", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_services_reach_redis_by_its_service_name() -> None:
    for name, service in _compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if str(value).startswith("redis://"):
                assert value.startswith("redis://redis:6379/"), (name, key)


# -- Dockerfile ----------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile_starts_from_python_311_slim() -> None:
    assert _dockerfile_instructions()[0] == ("FROM", "python:3.11-slim")


def test_dockerfile_copy_sources_exist() -> None:
    copies = [rest for word, rest in _dockerfile_instructions() if word == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), source


def test_dockerfile_installs_the_package_with_the_metrics_extra() -> None:
    runs = " ".join(rest for word, rest in _dockerfile_instructions() if word == "RUN")
    assert re.search(r"pip install \"?\.\[[^\]]*metrics", runs)


def test_dockerfile_default_command_is_a_real_celery_command() -> None:
    cmd = next(rest for word, rest in _dockerfile_instructions() if word == "CMD")
    _assert_celery_argv_is_real(json.loads(cmd))


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for word, rest in _dockerfile_instructions() if word == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_entrypoint_script_is_executable_and_execs_its_arguments() -> None:
    script = DEPLOY / "docker-entrypoint.sh"
    assert script.stat().st_mode & 0o111
    assert script.read_text().startswith("#!/bin/sh")
    assert 'exec "$@"' in script.read_text()


# -- Kubernetes ----------------------------------------------------------------


def test_every_k8s_document_has_kind_api_version_and_name() -> None:
    expected = {
        "ConfigMap": "v1",
        "Service": "v1",
        "Deployment": "apps/v1",
        "DaemonSet": "apps/v1",
    }
    docs = _k8s_documents()
    assert docs
    for doc in docs:
        assert expected[doc["kind"]] == doc["apiVersion"], doc["kind"]
        assert doc["metadata"]["name"]


def test_k8s_workload_selectors_match_their_pod_labels() -> None:
    for workload in _workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_k8s_services_select_an_existing_workload() -> None:
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads()]
    services = [d for d in _k8s_documents() if d["kind"] == "Service"]
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels)


def test_k8s_service_target_ports_are_named_container_ports() -> None:
    ports = {
        port["name"]
        for w in _workloads()
        for c in w["spec"]["template"]["spec"]["containers"]
        for port in c.get("ports", [])
    }
    for service in (d for d in _k8s_documents() if d["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


def test_k8s_has_gpu_cpu_and_flower_workloads() -> None:
    components = {
        w["metadata"]["labels"]["app.kubernetes.io/component"]: w["kind"] for w in _workloads()
    }
    assert components["worker-cpu"] == "Deployment"
    assert components["worker-gpu"] in {"Deployment", "DaemonSet"}
    assert components["flower"] == "Deployment"


def test_k8s_gpu_worker_limits_nvidia_gpus_and_runs_per_device() -> None:
    gpu = next(
        w
        for w in _workloads()
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "worker-gpu"
    )
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "--per-device" in container["args"]


def test_k8s_containers_take_settings_from_the_configmap() -> None:
    configmaps = {d["metadata"]["name"] for d in _k8s_documents() if d["kind"] == "ConfigMap"}
    for workload in _workloads():
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] == "redis":
            continue
        for container in workload["spec"]["template"]["spec"]["containers"]:
            refs = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
            assert refs <= configmaps


def test_k8s_snakepit_containers_keep_the_image_entrypoint() -> None:
    """`args`, not `command`: the entrypoint prepares the metrics directory."""
    for workload in _workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("snakepit-celery"):
                assert "command" not in container
                assert container["args"][0] == "celery"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


# -- systemd -------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(SYSTEMD_UNIT.read_text())
    return parser


def test_systemd_unit_has_exec_start_restart_and_install_target() -> None:
    unit = _unit()
    assert unit["Service"]["ExecStart"]
    assert unit["Service"]["Restart"] in {"always", "on-failure"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_starts_a_per_device_snakepit_worker() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[0].endswith("/celery")
    assert argv[argv.index("snakepit") :][:3] == ["snakepit", "worker", "--per-device"]


def test_systemd_environment_file_example_names_a_real_app() -> None:
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "systemd" / "snakepit-worker.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    _assert_celery_argv_is_real(["celery", "-A", env["CELERY_APP"], "worker"])
    assert "${CELERY_APP}" in _unit()["Service"]["ExecStart"]


# -- everything ------------------------------------------------------------------


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda argv: " ".join(argv[2:6]))
def test_every_celery_command_names_a_real_app_and_subcommand(argv: list[str]) -> None:
    _assert_celery_argv_is_real(argv)


def test_commands_were_found_in_every_deployment_kind() -> None:
    assert len(_all_commands()) >= 8


# -- the example app they all run ----------------------------------------------------


def _example_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
    }


def test_example_app_imports_installs_snakepit_and_registers_its_tasks(
    redis_url: str, key_prefix: str
) -> None:
    script = (
        "import json, examples.fleet as f\n"
        "from snakepit_celery.celery.install import is_installed\n"
        "print(json.dumps({'installed': is_installed(f.app), "
        "'tasks': sorted(t for t in f.app.tasks if t.startswith('examples.'))}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_example_env(redis_url, key_prefix),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {
        "installed": True,
        "tasks": ["examples.fleet.infer", "examples.fleet.preprocess"],
    }


def test_health_check_command_runs_against_the_example_app(redis_url: str, key_prefix: str) -> None:
    """`snakepit ping` (the compose/k8s probe) answers: no node of this host is alive here."""
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.run(
        [str(celery), "-A", "examples.fleet", "snakepit", "ping", "--json"],
        cwd=ROOT,
        env=_example_env(redis_url, key_prefix),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["nodes"] == []
