"""The Kubernetes manifests: rendered by `kubectl kustomize`, valid offline, consistent with the daemon."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from deepsift.daemon.settings import Settings

HERE = Path(__file__).resolve().parent
BASE = HERE.parents[2] / "deploy" / "k8s" / "base"
KEDA_SCHEMA = HERE / "schemas" / "scaledobject-keda-v1alpha1.json"
OVERLAY_NAMES = ("base", "gpu")
# The oldest Kubernetes the manifests claim (unhealthyPodEvictionPolicy, CronJob batch/v1 …) and the newest bundled.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "PodDisruptionBudget",
    "Job",
    "CronJob",
    "ScaledObject",
    "TriggerAuthentication",
}
# The Secret the operator creates (deploy/README.md, "Credentials"); nothing in the tree builds it.
CREDENTIALS_SECRET = "deepsift-credentials"
# The workloads that open the verdict database (trainer rebuild-engine reads none).
DATABASE_WORKLOADS = (("Deployment", "deepsift-daemon"), ("Job", "deepsift-db-upgrade"), ("CronJob", "deepsift-drift"))
LIVE_PATH, READY_PATH, METRICS_PATH = "/healthz/live", "/healthz/ready", "/metrics"
# Headroom between the drain deadline and SIGKILL: commit offsets, leave the group, flush logs.
STOP_HEADROOM_S = 10
NON_ROOT_UID = 10001


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    return found


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"]["spec"]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in ("Deployment", "Job", "CronJob")]


def the_container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(obj)["containers"]
    return container


def daemon(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return named(objects, "Deployment", "deepsift-daemon")


def environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container sees: its ConfigMaps and Secrets (envFrom), then its own env."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values |= named(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
        else:
            data = named(objects, "Secret", source["secretRef"]["name"]).get("data", {})
            values |= {key: base64.b64decode(value).decode() for key, value in data.items()}
    return values | {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def drain_deadline_s(objects: list[dict[str, Any]]) -> float:
    configured = environment(objects, the_container(daemon(objects))).get("DEEPSIFT_DRAIN_DEADLINE_S")
    return float(configured) if configured else float(Settings.model_construct().drain_deadline_s)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered, overlay):
    objects = rendered[overlay]
    assert {obj["kind"] for obj in objects} == EXPECTED_KINDS
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: see the KEDA test
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_scaled_object_is_valid_and_scales_the_daemon_on_its_own_consumer_group(rendered, overlay):
    objects = rendered[overlay]
    (scaled,) = of_kind(objects, "ScaledObject")
    jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text())).validate(scaled)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", daemon(objects)["metadata"]["name"])
    assert "replicas" not in daemon(objects)["spec"], "an apply would reset the replica count KEDA set"
    (trigger,) = scaled["spec"]["triggers"]
    env = environment(objects, the_container(daemon(objects)))
    from_env = {key: value for key, value in trigger["metadata"].items() if key.endswith("FromEnv")}
    expected = {"bootstrapServersFromEnv", "topicFromEnv", "consumerGroupFromEnv"}
    assert set(from_env) == expected and all(env.get(var) for var in from_env.values())


def test_keda_schema_refuses_what_keda_would_refuse(rendered):
    # Given the rendered ScaledObject with a typo'd key and an unquoted boolean in the trigger metadata
    (scaled,) = of_kind(rendered["base"], "ScaledObject")
    validator = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "5"
    unquoted = json.loads(json.dumps(scaled))
    unquoted["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False
    # Then both are refused
    for broken in (typo, unquoted):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_probes_and_scrape_use_the_daemons_health_port_and_paths(rendered, overlay, run_settings):
    objects = rendered[overlay]
    container = the_container(daemon(objects))
    configured = environment(objects, container).get("DEEPSIFT_HEALTH_PORT")
    port = int(configured) if configured else run_settings.health_port
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (probe["path"], ports[probe["port"]]) for kind, probe in probes.items()} == {
        "startupProbe": (LIVE_PATH, port),
        "livenessProbe": (LIVE_PATH, port),
        "readinessProbe": (READY_PATH, port),
    }
    annotations = daemon(objects)["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(port), METRICS_PATH)


def test_the_daemons_health_server_answers_the_probe_paths():
    # Given the daemon's own health server on a free port
    health = pytest.importorskip("deepsift.daemon.stream.health", reason="`daemon run` (issue 5) has not landed")
    server = health.HealthServer(health.Health(), lambda: b"", "127.0.0.1", 0).start()
    try:
        # When the kubelet and Prometheus ask the paths the manifests name
        statuses = {}
        for path in (LIVE_PATH, READY_PATH, METRICS_PATH):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                    statuses[path] = response.status
            except urllib.error.HTTPError as e:
                statuses[path] = e.code
    finally:
        server.close()
    # Then each path exists: live while starting, not ready before the engine is warm, metrics served
    assert statuses == {LIVE_PATH: 200, READY_PATH: 503, METRICS_PATH: 200}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_termination_grace_outlasts_the_drain_deadline(rendered, overlay):
    objects = rendered[overlay]
    grace = pod_spec(daemon(objects))["terminationGracePeriodSeconds"]
    assert 0 < drain_deadline_s(objects) <= grace - STOP_HEADROOM_S


def test_drain_deadline_configured_is_the_daemons_setting(rendered, run_settings):
    # The configured drain deadline is a real setting whose default is the value configured (one number to tune).
    env = environment(rendered["base"], the_container(daemon(rendered["base"])))
    assert float(env["DEEPSIFT_DRAIN_DEADLINE_S"]) == run_settings.drain_deadline_s


def test_gpu_overlay_gives_each_daemon_and_rebuild_a_gpu_and_the_base_none(rendered):
    def gpus(obj: dict[str, Any]) -> int:
        return int(the_container(obj)["resources"].get("limits", {}).get("nvidia.com/gpu", 0))

    rebuild = "deepsift-rebuild-engine"
    assert [gpus(daemon(rendered["gpu"])), gpus(named(rendered["gpu"], "CronJob", rebuild))] == [1, 1]
    assert all(gpus(obj) == 0 for obj in workloads(rendered["base"]))
    assert gpus(named(rendered["gpu"], "Job", "deepsift-db-upgrade")) == 0
    assert environment(rendered["gpu"], the_container(daemon(rendered["gpu"])))["DEEPSIFT_DEVICE"] == "cuda"
    assert environment(rendered["base"], the_container(daemon(rendered["base"])))["DEEPSIFT_DEVICE"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_engine_store_is_one_shared_volume_read_only_for_daemons(rendered, overlay):
    objects = rendered[overlay]
    pvc = named(objects, "PersistentVolumeClaim", "deepsift-engines")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    def store_mount(obj: dict[str, Any]) -> tuple[str, bool]:
        container = the_container(obj)
        store = environment(objects, container)["DEEPSIFT_ENGINE_STORE"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == store]
        (volume,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == mount["name"]]
        return volume["persistentVolumeClaim"]["claimName"], mount.get("readOnly", False)

    assert store_mount(daemon(objects)) == ("deepsift-engines", True)
    assert store_mount(named(objects, "CronJob", "deepsift-rebuild-engine")) == ("deepsift-engines", False)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_reference_resolves_to_a_rendered_object(rendered, overlay):
    objects = rendered[overlay]
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for obj in workloads(objects):
        spec = pod_spec(obj)
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for source in the_container(obj).get("envFrom", []):
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert (kind, source.get("configMapRef", source.get("secretRef"))["name"]) in names
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    pod_labels = daemon(objects)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert daemon(objects)["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_jobs_run_the_migration_and_the_rebuild(rendered, overlay, has_command):
    objects = rendered[overlay]
    migrate = the_container(named(objects, "Job", "deepsift-db-upgrade"))
    assert migrate["args"] == ["daemon", "db", "upgrade"] and has_command("daemon", "db", "upgrade")
    rebuild_job = named(objects, "CronJob", "deepsift-rebuild-engine")
    assert rebuild_job["spec"]["suspend"] is True, "a template: it must never run on a schedule"
    rebuild = the_container(rebuild_job)
    assert rebuild["args"][:4] == ["trainer", "--engine-store", "$(DEEPSIFT_ENGINE_STORE)", "rebuild-engine"]
    env = environment(objects, rebuild)
    assert all(env.get(var) for arg in rebuild["args"] for var in re.findall(r"\$\((\w+)\)", arg))
    assert the_container(daemon(objects))["args"] == ["daemon", "run"]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_pods_run_as_the_images_non_root_user_on_a_read_only_root(rendered, overlay):
    for obj in workloads(rendered[overlay]):
        spec = pod_spec(obj)
        context = spec["securityContext"]
        assert (context["runAsNonRoot"], context["runAsUser"], context["seccompProfile"]["type"]) == (
            True,
            NON_ROOT_UID,
            "RuntimeDefault",
        )
        assert spec["automountServiceAccountToken"] is False
        container = the_container(obj)["securityContext"]
        assert container == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }


def test_settings_files_name_only_daemon_settings(rendered, run_settings, env_keys, unknown_settings):
    written = env_keys((BASE / "config.env").read_text())
    rendered_keys = environment(rendered["gpu"], the_container(daemon(rendered["gpu"])))
    assert not unknown_settings([*written, *rendered_keys]), "pydantic-settings would silently ignore these"


def matches(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (``k=v``, ``k!=v``; ``!=`` also matches objects without ``k``)."""
    for term in selector.split(","):
        key, op, value = re.match(r"\s*([^!=\s]+)\s*(!=|==|=)\s*(\S*)\s*$", term).groups()
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


def test_documented_migrate_first_selector_applies_what_the_migration_needs_and_no_daemon(rendered):
    # Given the selector deploy/README.md applies before waiting for the migration
    readme = (HERE.parents[2] / "deploy" / "README.md").read_text()
    selector = re.search(r"^MIGRATE='([^']+)'$", readme, flags=re.MULTILINE)[1]
    # When it filters the rendered GPU overlay
    objects = rendered["gpu"]
    chosen = [obj for obj in objects if matches(selector, obj["metadata"].get("labels", {}))]
    kinds = {obj["kind"] for obj in chosen}
    # Then the migration Job comes with everything it references, and nothing that consumes jobs or scales
    job = named(objects, "Job", "deepsift-db-upgrade")
    needs = {("Namespace", "deepsift"), ("ServiceAccount", pod_spec(job)["serviceAccountName"])} | {
        ("ConfigMap" if "configMapRef" in ref else "Secret", ref.get("configMapRef", ref.get("secretRef"))["name"])
        for ref in the_container(job)["envFrom"]
    }
    assert needs | {("Job", "deepsift-db-upgrade")} <= {(obj["kind"], obj["metadata"]["name"]) for obj in chosen}
    assert not kinds & {"Deployment", "ScaledObject", "PodDisruptionBudget", "CronJob"}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_drift_cronjob_runs_daemon_drift_and_fails_its_job_at_once_on_drift_or_too_few(rendered, overlay):
    from deepsift.daemon.cli import build_parser
    from deepsift.daemon.drift import DRIFT, TOO_FEW

    # Given the rendered drift CronJob
    objects = rendered[overlay]
    cron = named(objects, "CronJob", "deepsift-drift")
    container = the_container(cron)
    # Then it runs on its schedule, one at a time, a `daemon drift` whose options the daemon's parser accepts
    assert not cron["spec"].get("suspend", False) and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert container["args"][:2] == ["daemon", "drift"]
    assert build_parser().parse_args(container["args"][1:]).json, "one JSON object per run, for the log pipeline"
    env = environment(objects, container)
    assert env.get("DEEPSIFT_DATABASE_URL") and env.get("DEEPSIFT_ENGINE_NAME")
    # And drift or too few verdicts fail the Job without a retry (the figures would not change); exit 1 retries
    (rule,) = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    assert (rule["onExitCodes"]["operator"], sorted(rule["onExitCodes"]["values"])) == ("In", [DRIFT, TOO_FEW])
    assert pod_spec(cron)["restartPolicy"] == "Never"  # what a podFailurePolicy requires


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_no_secret_is_built_from_the_tree_and_no_password_is_in_the_config(rendered, overlay, env_keys):
    from sqlalchemy import make_url

    # Given the rendered objects and the settings file
    objects = rendered[overlay]
    config = env_keys((BASE / "config.env").read_text())
    # Then no Secret is rendered, no secrets file lies in the tree, and the database URL holds no password
    assert not of_kind(objects, "Secret") and not (BASE / "secrets.env").exists()
    assert make_url(config["DEEPSIFT_DATABASE_URL"]).password is None
    assert not [key for key in config if key.endswith("PASSWORD")], "passwords come from files (*_FILE)"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_database_workloads_read_the_operators_secret_as_files_the_file_settings_name(rendered, overlay):
    objects = rendered[overlay]
    for kind, name in DATABASE_WORKLOADS:
        obj = named(objects, kind, name)
        container = the_container(obj)
        password_file = Path(environment(objects, container)["DEEPSIFT_DATABASE_PASSWORD_FILE"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(password_file.parent)]
        (volume,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == mount["name"]]
        assert mount.get("readOnly") is True and volume["secret"]["secretName"] == CREDENTIALS_SECRET
        # owner-and-group readable only; the group is the pod's fsGroup, so the non-root user can read it
        assert volume["secret"]["defaultMode"] == 0o440 and pod_spec(obj)["securityContext"]["fsGroup"] == NON_ROOT_UID
        assert not [ref for ref in container.get("envFrom", []) if "secretRef" in ref]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_keda_reads_the_broker_with_the_daemons_own_credential(rendered, overlay, env_keys):
    # Given the ScaledObject's trigger and the SASL password file the daemon would read (commented in config.env)
    objects = rendered[overlay]
    (scaled,) = of_kind(objects, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    sasl_file = Path(env_keys((BASE / "config.env").read_text())["DEEPSIFT_KAFKA_SASL_PASSWORD_FILE"])
    password_file = Path(environment(objects, the_container(daemon(objects)))["DEEPSIFT_DATABASE_PASSWORD_FILE"])
    # Then KEDA authenticates through a rendered TriggerAuthentication whose password is the same Secret's key
    auth = named(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert refs["password"] == (CREDENTIALS_SECRET, sasl_file.name) and sasl_file.parent == password_file.parent


def test_deploy_guide_creates_the_secret_with_the_keys_the_manifests_read(rendered, env_keys):
    # Given the `kubectl create secret` command of deploy/README.md
    readme = (HERE.parents[2] / "deploy" / "README.md").read_text()
    command = re.search(r"kubectl -n deepsift create secret generic (\S+)((?:.*\\\n)*.*)", readme)
    assert command, "deploy/README.md must show how to create the credentials Secret"
    keys = set(re.findall(r"--from-(?:file|literal)=([a-z0-9-]+)=", command[2]))
    # Then it creates the Secret the pods and KEDA name, with every key they read
    config = env_keys((BASE / "config.env").read_text())
    read = {Path(config[var]).name for var in ("DEEPSIFT_DATABASE_PASSWORD_FILE", "DEEPSIFT_KAFKA_SASL_PASSWORD_FILE")}
    (auth,) = of_kind(rendered["base"], "TriggerAuthentication")
    assert command[1] == CREDENTIALS_SECRET and read | {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= keys
