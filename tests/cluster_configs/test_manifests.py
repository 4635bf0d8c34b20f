"""Validation of the cluster configurations under ``cluster_configs/`` and the image recipe.

* The Ray cluster launcher YAML goes through Ray's own ``prepare_config`` + ``validate_config``
  (the JSON schema shipped with ray 2.60; nothing reaches the network).
* KubeRay manifests are checked against a hand-transcribed subset of the KubeRay v1 CRDs
  (``ray-operator/apis/ray/v1`` of KubeRay v1.6: RayCluster, RayJob, RayCronJob): apiVersion/kind,
  required fields, no unknown fields at the levels transcribed below, well-formed container
  resources, and the project's security rules (docs/SECURITY.md): token auth on every Ray
  container, no LoadBalancer/NodePort/Ingress, no credentials in any file.
* Every entrypoint names a pipeline stage module and parses with that stage's own CLI parser.

Each rule has a mutation test: a loaded manifest is broken on purpose and the validator must name
the problem, so a validator that accepts everything fails the suite.
"""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster_configs"
LAUNCHER = CONFIGS / "aws-autoscaler.yaml"
KUBERAY = CONFIGS / "kuberay"
DOCKERFILE = REPO / "docker" / "Dockerfile"
PIPELINE_STAGES = ("ingest", "train", "predict", "evaluate", "export", "reprocess")
AUTH_SECRET_KEY = "auth_token"


# --------------------------------------------------------------------------------------------
# KubeRay v1 CRD subset (field names as in the CRD's openAPIV3Schema)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fields:
    """Allowed and required keys of one object level of a CRD."""

    allowed: frozenset[str]
    required: frozenset[str] = frozenset()


RAYCLUSTER_SPEC = Fields(
    frozenset(
        {
            "authOptions", "autoscalerOptions", "enableInTreeAutoscaling",
            "gcsFaultToleranceOptions", "headGroupSpec", "headServiceAnnotations", "managedBy",
            "rayVersion", "suspend", "workerGroupSpecs",
        }
    ),
    frozenset({"headGroupSpec"}),
)
AUTH_OPTIONS = Fields(frozenset({"mode", "secretName"}), frozenset({"mode"}))
AUTOSCALER_OPTIONS = Fields(
    frozenset(
        {
            "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy", "resources",
            "securityContext", "upscalingMode", "version", "volumeMounts",
        }
    )
)
HEAD_GROUP_SPEC = Fields(
    frozenset({"enableIngress", "headService", "rayStartParams", "serviceType", "template"}),
    frozenset({"rayStartParams", "template"}),
)
WORKER_GROUP_SPEC = Fields(
    frozenset(
        {
            "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts",
            "rayStartParams", "replicas", "scaleStrategy", "suspend", "template",
        }
    ),
    frozenset({"groupName", "maxReplicas", "minReplicas", "rayStartParams", "template"}),
)
RAYJOB_SPEC = Fields(
    frozenset(
        {
            "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
            "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
            "jobId", "managedBy", "metadata", "rayClusterSpec", "runtimeEnvYAML",
            "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
            "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
        }
    ),
    frozenset({"entrypoint"}),
)
RAYCRONJOB_SPEC = Fields(
    frozenset({"jobTemplate", "schedule", "suspend", "timeZone"}),
    frozenset({"jobTemplate", "schedule"}),
)
POD_TEMPLATE = Fields(frozenset({"metadata", "spec"}), frozenset({"spec"}))
RESOURCES = Fields(frozenset({"claims", "limits", "requests"}))
SUBMISSION_MODES = frozenset({"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"})
AUTH_MODES = frozenset({"token", "disabled"})
KIND_API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "RayCronJob": "ray.io/v1",
    "CronJob": "batch/v1",
    "ConfigMap": "v1",
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}
# Kinds that must never appear: a Secret would put a credential in the repo, an Ingress would
# publish the dashboard.
FORBIDDEN_KINDS = frozenset({"Secret", "Ingress"})
PUBLIC_SERVICE_TYPES = frozenset({"LoadBalancer", "NodePort"})

_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
)
_SUFFIX = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key field": re.compile(r"(?i)secret_access_key"),
    "AWS session token field": re.compile(r"(?i)aws_session_token"),
    "password field": re.compile(r"(?im)^\s*-?\s*password\s*:"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "literal Ray token": re.compile(r"RAY_AUTH_TOKEN\s*=\s*['\"]?[A-Za-z0-9]{16,}"),
}


def parse_quantity(value: Any) -> float:
    """Parse a Kubernetes resource quantity (``"500m"``, ``"16Gi"``, ``4``) into base units.

    Raises:
        ValueError: If ``value`` is not a quantity.
    """
    match = _QUANTITY.match(str(value))
    if isinstance(value, bool) or match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(match["num"]) * _SUFFIX[match["suffix"]]


def check_fields(obj: Any, fields: Fields, path: str) -> list[str]:
    """Errors for a non-mapping, missing required keys or keys outside the CRD at ``path``."""
    if not isinstance(obj, dict):
        return [f"{path}: expected a mapping, got {type(obj).__name__}"]
    missing = sorted(fields.required - obj.keys())
    errors = [f"{path}.{key}: required field missing" for key in missing]
    errors += [f"{path}.{key}: unknown field" for key in sorted(obj.keys() - fields.allowed)]
    return errors


def check_resources(resources: Any, path: str) -> list[str]:
    """Errors for malformed container resources: bad quantities, requests above limits."""
    errors = check_fields(resources, RESOURCES, path)
    if errors:
        return errors
    parsed: dict[str, dict[str, float]] = {"limits": {}, "requests": {}}
    for section, values in parsed.items():
        for name, value in (resources.get(section) or {}).items():
            try:
                values[name] = parse_quantity(value)
            except ValueError as exc:
                errors.append(f"{path}.{section}.{name}: {exc}")
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            raw_request, raw_limit = resources["requests"][name], resources["limits"][name]
            errors.append(
                f"{path}.requests.{name}: request {raw_request!r} exceeds limit {raw_limit!r}"
            )
    for section in ("limits", "requests"):
        gpus = parsed[section].get("nvidia.com/gpu")
        if gpus is not None and gpus != int(gpus):
            errors.append(f"{path}.{section}.nvidia.com/gpu: GPUs must be a whole number")
    return errors


def check_auth_env(env: Any, path: str) -> list[str]:
    """Errors unless ``env`` sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret."""
    by_name = {item.get("name"): item for item in env or [] if isinstance(item, dict)}
    errors = []
    mode = by_name.get("RAY_AUTH_MODE")
    if mode is None or mode.get("value") != "token":
        errors.append(f"{path}: RAY_AUTH_MODE must be 'token'")
    token = by_name.get("RAY_AUTH_TOKEN")
    ref = ((token or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    from_secret = bool(ref.get("name")) and ref.get("key") == AUTH_SECRET_KEY
    if token is None or "value" in token or not from_secret:
        errors.append(
            f"{path}: RAY_AUTH_TOKEN must come from valueFrom.secretKeyRef "
            f"(key {AUTH_SECRET_KEY!r}), never a literal value"
        )
    return errors


def check_pod_template(template: Any, path: str, ray_pod: bool) -> list[str]:
    """Errors in a pod template; in a Ray pod every container must carry token auth."""
    errors = check_fields(template, POD_TEMPLATE, path)
    if errors:
        return errors
    containers = (template["spec"] or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        return [f"{path}.spec.containers: at least one container required"]
    for i, container in enumerate(containers):
        cpath = f"{path}.spec.containers[{i}]"
        missing = [key for key in ("name", "image") if not container.get(key)]
        errors += [f"{cpath}.{key}: required field missing" for key in missing]
        for port in container.get("ports") or []:
            if "hostPort" in port:
                errors.append(f"{cpath}.ports: hostPort {port['hostPort']} publishes a node port")
        if "resources" in container:
            errors += check_resources(container["resources"], f"{cpath}.resources")
        if ray_pod:
            errors += check_auth_env(container.get("env"), f"{cpath}.env")
    return errors


def check_ray_start_params(params: Any, path: str) -> list[str]:
    """rayStartParams is map[string]string in the CRD: every value must be a string."""
    if not isinstance(params, dict):
        return [f"{path}: expected a mapping"]
    return [
        f"{path}.{key}: value must be a string, got {value!r}"
        for key, value in params.items()
        if not isinstance(value, str)
    ]


def check_raycluster_spec(spec: Any, path: str) -> list[str]:
    """Errors in a RayClusterSpec (RayCluster.spec or RayJob.spec.rayClusterSpec)."""
    errors = check_fields(spec, RAYCLUSTER_SPEC, path)
    if not isinstance(spec, dict):
        return errors
    auth = spec.get("authOptions")
    if auth is not None:
        errors += check_fields(auth, AUTH_OPTIONS, f"{path}.authOptions")
        if isinstance(auth, dict) and auth.get("mode") not in AUTH_MODES:
            errors.append(f"{path}.authOptions.mode: must be one of {sorted(AUTH_MODES)}")
        elif isinstance(auth, dict) and auth.get("mode") != "token":
            errors.append(f"{path}.authOptions.mode: token auth must stay on")
    if "autoscalerOptions" in spec:
        options = spec["autoscalerOptions"]
        errors += check_fields(options, AUTOSCALER_OPTIONS, f"{path}.autoscalerOptions")
        if spec.get("enableInTreeAutoscaling") and isinstance(options, dict):
            errors += check_auth_env(options.get("env"), f"{path}.autoscalerOptions.env")
            if "resources" in options:
                rpath = f"{path}.autoscalerOptions.resources"
                errors += check_resources(options["resources"], rpath)
    head = spec.get("headGroupSpec")
    hpath = f"{path}.headGroupSpec"
    errors += check_fields(head, HEAD_GROUP_SPEC, hpath)
    if isinstance(head, dict):
        errors += check_ray_start_params(head.get("rayStartParams"), f"{hpath}.rayStartParams")
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            errors.append(f"{hpath}.serviceType: must be ClusterIP, got {head['serviceType']!r}")
        if head.get("enableIngress"):
            errors.append(f"{hpath}.enableIngress: the dashboard must not be published")
        if "template" in head:
            errors += check_pod_template(head["template"], f"{hpath}.template", ray_pod=True)
    groups = spec.get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(names) != len(set(names)):
        errors.append(f"{path}.workerGroupSpecs: groupName values must be unique, got {names}")
    for i, group in enumerate(groups):
        gpath = f"{path}.workerGroupSpecs[{i}]"
        errors += check_fields(group, WORKER_GROUP_SPEC, gpath)
        if not isinstance(group, dict):
            continue
        errors += check_ray_start_params(group.get("rayStartParams"), f"{gpath}.rayStartParams")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        replicas = group.get("replicas", low)
        counts = (low, replicas, high)
        if not all(isinstance(v, int) and v >= 0 for v in counts) or not low <= replicas <= high:
            errors.append(
                f"{gpath}: need 0 <= minReplicas <= replicas <= maxReplicas, got {counts}"
            )
        if "template" in group:
            errors += check_pod_template(group["template"], f"{gpath}.template", ray_pod=True)
    return errors


def check_rayjob_spec(spec: Any, path: str) -> list[str]:
    """Errors in a RayJobSpec (RayJob.spec, RayCronJob.spec.jobTemplate, templates)."""
    errors = check_fields(spec, RAYJOB_SPEC, path)
    if not isinstance(spec, dict):
        return errors
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        modes = sorted(SUBMISSION_MODES)
        errors.append(f"{path}.submissionMode: must be one of {modes}, got {mode!r}")
    for key in ("backoffLimit", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        value, least = spec.get(key, 1), 1 if key == "activeDeadlineSeconds" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            errors.append(f"{path}.{key}: must be an integer >= {least}, got {value!r}")
    if not isinstance(spec.get("shutdownAfterJobFinishes", False), bool):
        errors.append(f"{path}.shutdownAfterJobFinishes: must be a boolean")
    if "rayClusterSpec" not in spec:
        errors.append(f"{path}.rayClusterSpec: required (the project never uses clusterSelector)")
    else:
        errors += check_raycluster_spec(spec["rayClusterSpec"], f"{path}.rayClusterSpec")
    if mode == "K8sJobMode":
        if "submitterPodTemplate" not in spec:
            errors.append(f"{path}.submitterPodTemplate: the K8sJobMode submitter needs the token")
        else:
            spath = f"{path}.submitterPodTemplate"
            errors += check_pod_template(spec["submitterPodTemplate"], spath, ray_pod=True)
    return errors


def check_cron_schedule(schedule: Any, path: str) -> list[str]:
    """A standard five-field cron expression."""
    if not isinstance(schedule, str) or len(schedule.split()) != 5:
        return [f"{path}: expected a five-field cron expression, got {schedule!r}"]
    return []


def check_document(doc: Any, source: str) -> list[str]:
    """Structural and security errors of one Kubernetes object."""
    if not isinstance(doc, dict):
        return [f"{source}: expected a Kubernetes object, got {type(doc).__name__}"]
    kind = doc.get("kind")
    path = f"{source}:{kind}"
    if kind in FORBIDDEN_KINDS:
        return [f"{path}: kind {kind} is not allowed in cluster_configs (see docs/SECURITY.md)"]
    if kind not in KIND_API_VERSIONS:
        return [f"{path}: unexpected kind {kind!r}"]
    errors = []
    if doc.get("apiVersion") != KIND_API_VERSIONS[kind]:
        expected, got = KIND_API_VERSIONS[kind], doc.get("apiVersion")
        errors.append(f"{path}.apiVersion: expected {expected}, got {got!r}")
    meta = doc.get("metadata") or {}
    if not (meta.get("name") or meta.get("generateName")):
        errors.append(f"{path}.metadata: name (or generateName) required")
    spec = doc.get("spec")
    if kind == "RayCluster":
        errors += check_raycluster_spec(spec, f"{path}.spec")
    elif kind == "RayJob":
        errors += check_rayjob_spec(spec, f"{path}.spec")
    elif kind == "RayCronJob":
        errors += check_fields(spec, RAYCRONJOB_SPEC, f"{path}.spec")
        if isinstance(spec, dict):
            errors += check_cron_schedule(spec.get("schedule"), f"{path}.spec.schedule")
            if "jobTemplate" in spec:
                errors += check_rayjob_spec(spec["jobTemplate"], f"{path}.spec.jobTemplate")
    elif kind == "CronJob":
        errors += check_cron_schedule((spec or {}).get("schedule"), f"{path}.spec.schedule")
        if (spec or {}).get("concurrencyPolicy") != "Forbid":
            errors.append(f"{path}.spec.concurrencyPolicy: must be Forbid")
        pod = (((spec or {}).get("jobTemplate") or {}).get("spec") or {}).get("template")
        errors += check_pod_template(pod, f"{path}.spec.jobTemplate.spec.template", ray_pod=False)
    elif kind == "PersistentVolumeClaim":
        errors.append(f"{path}: no shared volume; cubes, checkpoints and label stores live in object storage")
    elif kind == "Service" and (spec or {}).get("type", "ClusterIP") in PUBLIC_SERVICE_TYPES:
        errors.append(f"{path}.spec.type: {spec['type']} would expose Ray publicly; use ClusterIP")
    elif kind == "ConfigMap":
        for key, rayjob in embedded_rayjobs(doc):
            errors += check_document(rayjob, f"{source}:ConfigMap.data.{key}")
    return errors


def embedded_rayjobs(configmap: dict) -> Iterator[tuple[str, dict]]:
    """The RayJob manifests held as text in a ConfigMap's data (CronJob templates)."""
    for key, text in (configmap.get("data") or {}).items():
        parsed = yaml.safe_load(text)
        if isinstance(parsed, dict) and parsed.get("kind") == "RayJob":
            yield key, parsed


def credential_findings(text: str, source: str) -> list[str]:
    """Names of credential patterns found in ``text``."""
    return [
        f"{source}: looks like a credential ({label})"
        for label, pattern in CREDENTIAL_PATTERNS.items()
        if pattern.search(text)
    ]


def parse_entrypoint(entrypoint: str) -> list[list[str]]:
    """Split a RayJob entrypoint into ``python -m pipelines.<stage> ARGS`` commands.

    A chain of stages must be wrapped in ``bash -c '...'``: in K8sJobMode KubeRay pastes the
    entrypoint into a shell line, so a bare ``&&`` would run the next stage in the submitter pod.

    Raises:
        ValueError: If a shell operator is unwrapped or a command is not a pipeline stage.
    """
    tokens = shlex.split(entrypoint)
    if tokens[:2] == ["bash", "-c"] and len(tokens) == 3:
        commands = [shlex.split(part) for part in tokens[2].split("&&")]
    elif any(t in {"&&", "||", ";", "|", "&"} for t in tokens):
        raise ValueError(f"shell operator outside `bash -c '...'` in entrypoint {entrypoint!r}")
    else:
        commands = [tokens]
    for command in commands:
        if command[:2] != ["python", "-m"] or not command[2:3] or "pipelines." not in command[2]:
            raise ValueError(f"expected `python -m pipelines.<stage> ...`, got {command!r}")
        stage = command[2].removeprefix("pipelines.")
        if stage not in PIPELINE_STAGES:
            raise ValueError(f"unknown pipeline stage {stage!r}; expected one of {PIPELINE_STAGES}")
    return commands


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_kuberay() -> dict[str, list[dict]]:
    """Every KubeRay manifest file, as its list of YAML documents."""
    files = sorted(KUBERAY.glob("*.yaml"))
    assert files, f"no manifests under {KUBERAY}"
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in files}


def rayjob_specs(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    """Every RayJob spec: RayJob objects, RayCronJob templates and ConfigMap-held templates."""
    specs = {}
    for name, docs in manifests.items():
        for doc in docs:
            if doc["kind"] == "RayJob":
                specs[f"{name}:RayJob"] = doc["spec"]
            elif doc["kind"] == "RayCronJob":
                specs[f"{name}:RayCronJob"] = doc["spec"]["jobTemplate"]
            elif doc["kind"] == "ConfigMap":
                for key, job in embedded_rayjobs(doc):
                    specs[f"{name}:ConfigMap.{key}"] = job["spec"]
    return specs


def find(manifests: dict[str, list[dict]], filename: str, kind: str) -> dict:
    """The one document of ``kind`` in ``filename``."""
    (doc,) = [d for d in manifests[filename] if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return load_kuberay()


@pytest.fixture
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


# --------------------------------------------------------------------------------------------
# Ray cluster launcher (Ray's own validation)
# --------------------------------------------------------------------------------------------


def ray_validate(config: dict) -> dict:
    """Fill Ray's AWS defaults and validate against ray-schema.json, as `ray up` does offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_passes_ray_schema_validation(launcher):
    prepared = ray_validate(launcher)
    nodes = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and nodes["head"]["max_workers"] == 0
    assert nodes["gpu_worker"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert nodes["gpu_worker"]["resources"]["GPU"] == 1 and nodes["gpu_worker"]["min_workers"] == 0
    assert sum(n.get("min_workers", 0) for n in nodes.values()) <= prepared["max_workers"]


def test_launcher_validation_rejects_unknown_field(launcher):
    import jsonschema

    launcher["dashboard_port"] = 8265
    with pytest.raises(jsonschema.ValidationError, match="dashboard_port"):
        ray_validate(launcher)
    del launcher["dashboard_port"]
    launcher["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        ray_validate(launcher)


def launcher_security_errors(config: dict) -> list[str]:
    """Security rules of the launcher: token auth on every start, nothing but SSH exposed."""
    errors = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            errors.append(f"{key}: every `ray start` must run with RAY_AUTH_MODE=token")
        if any("--dashboard-host=0.0.0.0" in c for c in starts):
            errors.append(f"{key}: dashboard bound to 0.0.0.0")
    head = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in head:
        errors.append("head_start_ray_commands: dashboard must listen on 127.0.0.1")
    if config.get("provider", {}).get("security_group", {}).get("IpPermissions"):
        errors.append("provider.security_group.IpPermissions: opens ports beyond SSH")
    run_options = [str(o) for o in config.get("docker", {}).get("run_options", [])]
    if any(re.match(r"^(-p|--publish)\b", o) for o in run_options):
        errors.append("docker.run_options: publishes a container port")
    return errors


def test_launcher_security_rules(launcher):
    assert launcher_security_errors(launcher) == []
    gpu_node = launcher["available_node_types"]["gpu_worker"]
    images = [launcher["docker"]["image"], gpu_node["docker"]["worker_image"]]
    assert [i.rsplit("-", 1)[1] for i in images] == ["cpu", "gpu"]


def test_launcher_security_rules_catch_mistakes(launcher):
    broken = copy.deepcopy(launcher)
    starts = broken["worker_start_ray_commands"]
    starts[-1] = starts[-1].replace("RAY_AUTH_MODE=token", "")
    rule = {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp"}
    broken["provider"]["security_group"] = {"IpPermissions": [rule]}
    broken["docker"]["run_options"].append("-p 8265:8265")
    assert launcher_security_errors(broken) == [
        "worker_start_ray_commands: every `ray start` must run with RAY_AUTH_MODE=token",
        "provider.security_group.IpPermissions: opens ports beyond SSH",
        "docker.run_options: publishes a container port",
    ]


# --------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------


def test_expected_manifests_present(manifests):
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in manifests.items()}
    assert kinds == {
        "cronjob-reprocess.yaml": ["ConfigMap", "CronJob", "Role", "RoleBinding", "ServiceAccount"],
        "raycluster.yaml": ["RayCluster"],
        "raycronjob-alpha.yaml": ["RayCronJob"],
        "rayjob-label.yaml": ["RayJob"],
        "rayjob-train.yaml": ["RayJob"],
        "serviceaccount.yaml": ["Namespace", "ServiceAccount"],
    }


def test_every_manifest_is_valid(manifests):
    errors = [e for name, docs in manifests.items() for d in docs for e in check_document(d, name)]
    assert errors == []


def test_raycluster_autoscales_cpu_and_gpu_groups(manifests):
    spec = find(manifests, "raycluster.yaml", "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert [parse_quantity(gpu[s]["nvidia.com/gpu"]) for s in ("limits", "requests")] == [1, 1]
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] > 0 for g in groups.values())


def test_all_ray_clusters_share_one_spec(manifests):
    """The RayJob / cron templates embed copies of the RayCluster spec: they must not drift."""
    reference = find(manifests, "raycluster.yaml", "RayCluster")["spec"]
    specs = rayjob_specs(manifests)
    assert sorted(specs) == [
        "cronjob-reprocess.yaml:ConfigMap.rayjob.yaml",
        "raycronjob-alpha.yaml:RayCronJob",
        "rayjob-label.yaml:RayJob",
        "rayjob-train.yaml:RayJob",
    ]
    drifted = [name for name, spec in specs.items() if spec["rayClusterSpec"] != reference]
    assert drifted == []
    submitters = {yaml.safe_dump(spec["submitterPodTemplate"]) for spec in specs.values()}
    assert len(submitters) == 1


def test_rayjobs_clean_up_and_retry(manifests):
    for name, spec in rayjob_specs(manifests).items():
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1, name
        assert spec["activeDeadlineSeconds"] > 0, name


def test_pods_use_the_object_storage_service_account(manifests):
    """Object storage is reached through the IRSA-annotated ServiceAccount, never keys."""
    account = find(manifests, "serviceaccount.yaml", "ServiceAccount")
    role_arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role_arn.startswith("arn:aws:iam::")
    name = account["metadata"]["name"]
    for label, spec in rayjob_specs(manifests).items():
        cluster = spec["rayClusterSpec"]
        templates = [cluster["headGroupSpec"]["template"], spec["submitterPodTemplate"]]
        templates += [g["template"] for g in cluster["workerGroupSpecs"]]
        assert {t["spec"]["serviceAccountName"] for t in templates} == {name}, label


def test_cronjob_creates_unique_rayjobs_with_least_privilege(manifests):
    docs = {d["kind"]: d for d in manifests["cronjob-reprocess.yaml"]}
    cron, role, binding = docs["CronJob"], docs["Role"], docs["RoleBinding"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("bitnami/kubectl")
    assert "kubectl create -f /templates/rayjob.yaml" in container["args"][0]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    account = docs["ServiceAccount"]["metadata"]["name"]
    assert pod["serviceAccountName"] == account == binding["subjects"][0]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert set(rule["verbs"]) <= {"create", "get", "list"} and "create" in rule["verbs"]
    ((_, template),) = embedded_rayjobs(docs["ConfigMap"])
    assert "name" not in template["metadata"] and template["metadata"]["generateName"].endswith("-")


def test_raycronjob_is_marked_alpha(manifests):
    text = (KUBERAY / "raycronjob-alpha.yaml").read_text()
    assert "ALPHA" in text and "--feature-gates=RayCronJob=true" in text
    spec = find(manifests, "raycronjob-alpha.yaml", "RayCronJob")["spec"]
    assert "concurrencyPolicy" not in spec  # not a RayCronJob field (KubeRay v1.6)


def test_no_credentials_in_any_file():
    files = [p for p in [*CONFIGS.rglob("*"), *DOCKERFILE.parent.rglob("*")] if p.is_file()]
    assert len(files) >= 8
    assert [f for p in files for f in credential_findings(p.read_text(), p.name)] == []


# --------------------------------------------------------------------------------------------
# The validator rejects real mistakes
# --------------------------------------------------------------------------------------------


def errors_after(manifests: dict, filename: str, kind: str, mutate) -> list[str]:
    """Validation errors of one document after ``mutate(deep copy of it)``."""
    doc = copy.deepcopy(find(manifests, filename, kind))
    mutate(doc)
    return check_document(doc, filename)


def test_rejects_unknown_fields_at_every_transcribed_level(manifests):
    def add_unknown(doc):
        doc["spec"]["enableAutoscaling"] = True  # real field: enableInTreeAutoscaling
        doc["spec"]["headGroupSpec"]["replicas"] = 1
        doc["spec"]["workerGroupSpecs"][1]["gpus"] = 1

    assert errors_after(manifests, "raycluster.yaml", "RayCluster", add_unknown) == [
        "raycluster.yaml:RayCluster.spec.enableAutoscaling: unknown field",
        "raycluster.yaml:RayCluster.spec.headGroupSpec.replicas: unknown field",
        "raycluster.yaml:RayCluster.spec.workerGroupSpecs[1].gpus: unknown field",
    ]
    def typo(d):
        d["spec"].update(ttlSecondsAfterFinish=60)

    errors = errors_after(manifests, "rayjob-train.yaml", "RayJob", typo)
    assert errors == ["rayjob-train.yaml:RayJob.spec.ttlSecondsAfterFinish: unknown field"]
    def batch_field(d):
        d["spec"].update(concurrencyPolicy="Forbid")

    errors = errors_after(manifests, "raycronjob-alpha.yaml", "RayCronJob", batch_field)
    assert errors == ["raycronjob-alpha.yaml:RayCronJob.spec.concurrencyPolicy: unknown field"]


def test_rejects_missing_required_fields(manifests):
    def drop(doc):
        del doc["spec"]["workerGroupSpecs"][0]["groupName"]
        del doc["spec"]["headGroupSpec"]["rayStartParams"]

    prefix = "raycluster.yaml:RayCluster.spec"
    assert errors_after(manifests, "raycluster.yaml", "RayCluster", drop) == [
        f"{prefix}.headGroupSpec.rayStartParams: required field missing",
        f"{prefix}.headGroupSpec.rayStartParams: expected a mapping",
        f"{prefix}.workerGroupSpecs[0].groupName: required field missing",
    ]


def test_rejects_missing_or_literal_token_auth(manifests):
    def strip_gpu_auth(doc):
        container = doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_MODE"]

    assert errors_after(manifests, "raycluster.yaml", "RayCluster", strip_gpu_auth) == [
        "raycluster.yaml:RayCluster.spec.workerGroupSpecs[1].template.spec.containers[0].env: "
        "RAY_AUTH_MODE must be 'token'"
    ]

    def literal_token(doc):
        submitter = doc["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
        submitter["env"] = [e for e in submitter["env"] if e["name"] != "RAY_AUTH_TOKEN"]
        submitter["env"].append({"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef0123"})

    (error,) = errors_after(manifests, "rayjob-label.yaml", "RayJob", literal_token)
    assert "submitterPodTemplate.spec.containers[0].env: RAY_AUTH_TOKEN must come from" in error
    def disable(d):
        d["spec"]["rayClusterSpec"]["authOptions"].update(mode="disabled")

    assert errors_after(manifests, "rayjob-train.yaml", "RayJob", disable) == [
        "rayjob-train.yaml:RayJob.spec.rayClusterSpec.authOptions.mode: token auth must stay on"
    ]


def test_rejects_public_services(manifests):
    def publish(d):
        d["spec"]["headGroupSpec"].update(serviceType="LoadBalancer")

    assert errors_after(manifests, "raycluster.yaml", "RayCluster", publish) == [
        "raycluster.yaml:RayCluster.spec.headGroupSpec.serviceType: "
        "must be ClusterIP, got 'LoadBalancer'"
    ]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"}}
    service["spec"] = {"type": "NodePort"}
    assert check_document(service, "x.yaml") == [
        "x.yaml:Service.spec.type: NodePort would expose Ray publicly; use ClusterIP"
    ]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert check_document(secret, "x.yaml") == [
        "x.yaml:Secret: kind Secret is not allowed in cluster_configs (see docs/SECURITY.md)"
    ]


def test_rejects_malformed_resources_and_start_params(manifests):
    def break_resources(doc):
        container = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        resources = container["resources"]
        resources["limits"]["cpu"] = "8 cores"
        resources["requests"]["memory"] = "64Gi"
        doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0

    prefix = "raycluster.yaml:RayCluster.spec"
    res = f"{prefix}.workerGroupSpecs[0].template.spec.containers[0].resources"
    assert errors_after(manifests, "raycluster.yaml", "RayCluster", break_resources) == [
        f"{prefix}.headGroupSpec.rayStartParams.num-cpus: value must be a string, got 0",
        f"{res}.limits.cpu: '8 cores' is not a Kubernetes quantity",
        f"{res}.requests.memory: request '64Gi' exceeds limit '32Gi'",
    ]


def test_rejects_broken_cron_template(manifests):
    def corrupt_template(doc):
        job = yaml.safe_load(doc["data"]["rayjob.yaml"])
        job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
        doc["data"]["rayjob.yaml"] = yaml.safe_dump(job)

    assert errors_after(manifests, "cronjob-reprocess.yaml", "ConfigMap", corrupt_template) == [
        "cronjob-reprocess.yaml:ConfigMap.data.rayjob.yaml:RayJob.spec.rayClusterSpec"
        ".workerGroupSpecs[0].maxReplica: unknown field"
    ]
    def allow(d):
        d["spec"].update(concurrencyPolicy="Allow")

    errors = errors_after(manifests, "cronjob-reprocess.yaml", "CronJob", allow)
    assert errors == ["cronjob-reprocess.yaml:CronJob.spec.concurrencyPolicy: must be Forbid"]


def test_credential_scan_detects_secrets():
    text = "env:\n  - name: AWS_ACCESS_KEY_ID\n    value: AKIAIOSFODNN7EXAMPLE\npassword: hunter2\n"
    assert credential_findings(text, "bad.yaml") == [
        "bad.yaml: looks like a credential (AWS access key id)",
        "bad.yaml: looks like a credential (password field)",
    ]


# --------------------------------------------------------------------------------------------
# Entrypoints name real pipeline stages with arguments their parsers accept
# --------------------------------------------------------------------------------------------


def all_commands(manifests: dict) -> list[tuple[str, list[str]]]:
    """(source, argv) of every stage command in every RayJob entrypoint."""
    return [
        (name, command)
        for name, spec in rayjob_specs(manifests).items()
        for command in parse_entrypoint(spec["entrypoint"])
    ]


STORE_OPTIONS = ("--store", "--out", "--out-root", "--checkpoint", "--labels", "--storage-path")


def persistent_volume_claims(node: object, path: str = "") -> Iterator[str]:
    """The path of every ``persistentVolumeClaim`` volume anywhere in a parsed manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "persistentVolumeClaim":
                yield path
            yield from persistent_volume_claims(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from persistent_volume_claims(value, f"{path}[{i}]")


def test_no_shared_volume_every_store_is_an_object_storage_url(manifests):
    """Issue 13: the manifests need no ReadWriteMany volume: every path a stage reads or writes
    is an ``s3://`` URL (credentials from the pods' IRSA role), and no pod mounts a PVC."""
    claims = [f"{name}{p}" for name, docs in manifests.items() for d in docs
              for p in persistent_volume_claims(d)]
    assert claims == []
    local = [(name, option, value) for name, cmd in all_commands(manifests)
             for option, value in zip(cmd, cmd[1:])
             if option in STORE_OPTIONS and not value.startswith("s3://")]
    assert local == []
    assert len([1 for _, cmd in all_commands(manifests) for o in cmd if o in STORE_OPTIONS]) >= 10


def test_a_shared_volume_is_refused():
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
           "spec": {"accessModes": ["ReadWriteMany"]}}
    assert any("no shared volume" in e for e in check_document(pvc, "pvc.yaml"))


def test_entrypoints_are_pipeline_stages(manifests):
    stages = {(name, cmd[2]) for name, cmd in all_commands(manifests)}
    assert stages == {
        ("rayjob-train.yaml:RayJob", "pipelines.train"),
        ("rayjob-label.yaml:RayJob", "pipelines.predict"),
        ("rayjob-label.yaml:RayJob", "pipelines.export"),
        *{
            (name, f"pipelines.{stage}")
            for name in rayjob_specs(manifests)
            if "reprocess" in name or "RayCronJob" in name
            for stage in ("reprocess", "export")
        },
    }
    train = dict(all_commands(manifests))["rayjob-train.yaml:RayJob"]
    assert train[train.index("--config") + 1].startswith("/app/configs/") and "--use-gpu" in train


def test_entrypoint_parser_rejects_mistakes():
    with pytest.raises(ValueError, match="shell operator outside"):
        parse_entrypoint("python -m pipelines.predict --out x && python -m pipelines.export")
    with pytest.raises(ValueError, match="unknown pipeline stage 'infer'"):
        parse_entrypoint("python -m pipelines.infer --out x")
    with pytest.raises(ValueError, match="expected `python -m pipelines"):
        parse_entrypoint("bash -c 'python train.py && python -m pipelines.export'")


@pytest.mark.parametrize("stage", PIPELINE_STAGES)
def test_stage_module_accepts_manifest_arguments(manifests, stage):
    """Each stage a manifest runs exists in pipelines/ and its own parser accepts the arguments."""
    module = f"pipelines.{stage}"
    argument_lists = [cmd[3:] for _, cmd in all_commands(manifests) if cmd[2] == module]
    if not argument_lists:
        pytest.skip(f"no manifest runs pipelines.{stage}")
    assert (REPO / "pipelines" / f"{stage}.py").is_file(), f"pipelines/{stage}.py is missing"
    parser = importlib.import_module(f"pipelines.{stage}").build_parser()
    for args in argument_lists:
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{module} rejects the manifest arguments {args} (exit {exc.code})")


# --------------------------------------------------------------------------------------------
# Image recipe
# --------------------------------------------------------------------------------------------


def pinned(dependency: str) -> str:
    """The ``==`` version pinned for ``dependency`` in pyproject.toml."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"^{re.escape(dependency)}(\[|==)", d)]
    return spec.split("==")[1]


def test_dockerfile_matches_project_pins():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == "ARG VARIANT=cpu"
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert base == f"FROM rayproject/ray:{pinned('ray')}-py311-${{VARIANT}}"
    assert f"ARG TORCH_VERSION={pinned('torch')}" in lines
    assert "https://download.pytorch.org/whl/cpu" in text
    assert "pip install --no-cache-dir -c /app/constraints.txt /app" in text  # the numeric pins of make install
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == "USER ray", "the image must end as the base image's non-root user"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", ".git", "**/auth_token"} <= set(ignore)
