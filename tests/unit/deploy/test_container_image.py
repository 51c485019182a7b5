"""The container recipe, read statically (no image is built here), and its HEALTHCHECK script, run for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CONTAINER = ROOT / "deploy" / "container"
CONTAINERFILE = CONTAINER / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def last(name: str) -> str:
    return [args for instruction, args in instructions() if instruction == name][-1]


def image_env() -> dict[str, str]:
    pairs = [re.findall(r"(\w+)=(\S+)", args) for instruction, args in instructions() if instruction == "ENV"]
    return {key: value for group in pairs for key, value in group}


def test_image_is_built_on_nvidia_cuda_with_the_gpu_extra():
    default_base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", CONTAINERFILE.read_text(), flags=re.MULTILINE)[1]
    assert last("FROM") == "${CUDA_IMAGE}" and re.match(r"(docker\.io/)?nvidia/cuda:\S+", default_base)
    runs = " ".join(args for instruction, args in instructions() if instruction == "RUN")
    assert "pip install '/opt/deepsift/src[gpu]'" in runs and "pip install -e" not in runs  # a regular install
    assert "rm -rf /opt/deepsift/src" in runs  # the image runs without a source tree
    assert image_env()["NVIDIA_DRIVER_CAPABILITIES"].split(",") == ["compute", "utility", "video"]


def test_image_copies_every_package_and_the_migrations():
    copied = {source for instruction, args in instructions() if instruction == "COPY" for source in args.split()[:-1]}
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_dirs = re.search(r"\[tool\.setuptools\.package-dir\]\n(.*?)\n\n", pyproject, flags=re.DOTALL)[1]
    folders = {line.split("=")[1].strip(' "') for line in package_dirs.splitlines()}
    assert folders == {"engines", "daemon", "trainer", "alembic"}
    needed = folders | {"pyproject.toml", "README.md"}
    assert needed <= copied
    assert all((ROOT / path).exists() for path in copied)


def test_image_runs_as_the_non_root_user_the_manifests_expect():
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert last("USER") == f"{context['runAsUser']}:{context['runAsGroup']}" and context["runAsUser"] != 0


def test_engine_store_is_a_volume_at_the_path_every_deployment_uses():
    store = image_env()["DEEPSIFT_ENGINE_STORE"]
    assert json.loads(last("VOLUME")) == [store]
    k8s_config = (ROOT / "deploy" / "k8s" / "base" / "config.env").read_text()
    unit = (ROOT / "deploy" / "systemd" / "deepsift-daemon.service").read_text()
    assert f"DEEPSIFT_ENGINE_STORE={store}\n" in k8s_config and f"Environment=DEEPSIFT_ENGINE_STORE={store}\n" in unit


def test_entrypoint_forwards_signals_and_runs_the_daemon():
    assert json.loads(last("ENTRYPOINT")) == ["/usr/bin/tini", "--"]
    assert json.loads(last("CMD")) == ["daemon", "run"]


def test_healthcheck_probes_the_daemons_port(run_settings):
    healthcheck = last("HEALTHCHECK")
    assert "--start-period=" in healthcheck and "/opt/deepsift/healthcheck.py" in healthcheck
    assert any(args.split() == ["deploy/container/healthcheck.py", "/opt/deepsift/healthcheck.py"]
               for instruction, args in instructions() if instruction == "COPY")  # fmt: skip
    assert last("EXPOSE") == str(run_settings.health_port)


def test_healthcheck_script_is_healthy_only_while_the_daemon_answers(run_settings):
    # Given the daemon's health server on a free port, and the script pointed there by the daemon's own setting
    health = pytest.importorskip("deepsift.daemon.stream.health", reason="`daemon run` (issue 5) has not landed")
    server = health.HealthServer(health.Health(), lambda: b"", "127.0.0.1", 0).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSIFT_")} | {
        "DEEPSIFT_HEALTH_PORT": str(server.port)
    }

    def check() -> int:
        script = CONTAINER / "healthcheck.py"
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60).returncode

    # When it runs while the server answers, and again once it is gone
    try:
        while_up = check()
    finally:
        server.close()
    after = check()
    # Then it is healthy, then not
    assert (while_up, after) == (0, 1)
