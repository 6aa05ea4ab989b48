"""The Kubernetes deployment (deploy/kubernetes/, docs/KUBERNETES.md), checked without a cluster.

Every kustomization is rendered with ``kubectl kustomize``; every rendered document is validated
strictly (an unknown field is an error) against the schemas of a pinned Kubernetes release
(``kubernetes-validate``), and the custom resources, which it has no schema for, against the
schemas in tests/deploy/schemas/ (ServiceMonitor, InferenceService: strict subsets of their CRDs
that refer to the same Kubernetes definitions). Then the properties the service relies on: probes
on /readyz and /healthz, a grace period longer than uvicorn's graceful window, a GPU only where a
profile means one, non-root pods on a read-only root, Service and ServiceMonitor selectors that
find their pods and ports, an autoscaler on a Deployment that exists and a metric that the
prometheus-adapter rule serves, one pod per DICOM spool, and only DENOISE_* names that
app/settings.py knows (it refuses any other at start-up).

kubectl missing (or one whose kustomize is older than v5): the tests skip, unless
CI_REQUIRE_KUBECTL=1, which .ci/run sets once it has made sure of one.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from app.settings import Settings
from tests.deploy.test_deploy import dockerfile_stages, exported_metric_names, promtool

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The oldest Kubernetes the manifests are written for: its schemas, not the newest's, so a field
# that only a later release knows is an error.
KUBERNETES_VERSION = "1.30"

OVERLAYS = ("gpu-single", "models-pvc", "triton", "kserve")
IMAGE = "medical-denoise"
# The containers that get a GPU, per overlay: kind/name/container ("predictor": KServe's model).
GPU_CONTAINERS = {
    "gpu-single": {"Deployment/denoise/denoise"},
    "models-pvc": {"Deployment/denoise/denoise"},
    "triton": {"Deployment/triton/triton"},
    "kserve": {"InferenceService/denoise/predictor"},
}
# The image target each overlay runs the service on.
IMAGE_TAG = {"gpu-single": "gpu", "models-pvc": "gpu", "triton": "cpu", "kserve": "cpu"}
CUSTOM_RESOURCE_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving-v1beta1.json",
}
GPU = "nvidia.com/gpu"


# --- rendering ---------------------------------------------------------------------------------


def kustomize_major(path: str) -> int | None:
    result = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True)
    try:
        version = json.loads(result.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    match = re.match(r"v(\d+)", version)
    return int(match.group(1)) if match else None


@functools.cache
def kubectl() -> str:
    """The first kubectl with kustomize v5: on PATH (the machine image's), else the one .ci/run
    puts in the virtual environment. Debian's kubernetes-client (kubectl 1.20, kustomize 2.0)
    cannot build a directory named in resources:."""
    candidates = [shutil.which("kubectl"), shutil.which("kubectl", path=str(Path(sys.executable).parent))]
    found = [path for path in dict.fromkeys(candidates) if path]
    for path in found:
        if (kustomize_major(path) or 0) >= 5:
            return path
    reason = f"no kubectl with kustomize v5 (found: {', '.join(found) or 'none'}; .ci/run installs one)"
    if os.environ.get("CI_REQUIRE_KUBECTL") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@functools.cache
def _render(directory: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # A deprecated field (bases:, patchesStrategicMerge:, commonLabels:) still renders, with a
    # warning: none is allowed.
    assert "deprecated" not in result.stderr.lower(), result.stderr
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's documents, a fresh copy each time (tests may change theirs)."""
    return [doc for doc in yaml.safe_load_all(_render(KUBE / "overlays" / overlay)) if doc]


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in KUBE.rglob("kustomization.yaml"))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = find(docs, kind, name)
    return doc


@dataclass
class Pod:
    """A pod template: a workload's, or a KServe component's (which inlines a PodSpec)."""

    owner: str  # kind/name, or InferenceService/name/transformer
    spec: dict[str, Any]
    labels: dict[str, str]
    workload: dict[str, Any]

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.spec["containers"]

    def volume(self, name: str) -> dict[str, Any]:
        templates = self.workload.get("spec", {}).get("volumeClaimTemplates", [])
        for template in templates:
            if template["metadata"]["name"] == name:
                return {"name": name, "volumeClaimTemplate": template}
        (volume,) = [v for v in self.spec.get("volumes", []) if v["name"] == name]
        return volume


def pods(docs: list[dict[str, Any]]) -> Iterator[Pod]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            template = doc["spec"]["template"]
            yield Pod(name, template["spec"], template["metadata"].get("labels", {}), doc)
        elif doc["kind"] == "InferenceService" and "transformer" in doc["spec"]:
            yield Pod(f"{name}/transformer", doc["spec"]["transformer"], {}, doc)


def runs_the_service(container: dict[str, Any]) -> bool:
    return container["image"].split(":")[0].split("/")[-1] == IMAGE


def environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's variables: its ConfigMaps' (envFrom), then its own env."""
    variables: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source  # no Secret in the environment: keys are files
        variables.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for variable in container.get("env", []):
        variables[variable["name"]] = variable.get("value", "")
    return variables


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# --- schema validation ------------------------------------------------------------------------


@functools.cache
def strict_definitions() -> dict[str, Any]:
    """kubernetes-validate's strict definitions of the pinned release: the types the built-in kinds
    are checked against."""
    version = [v for v in kubernetes_validate.utils.all_versions() if v.startswith(KUBERNETES_VERSION + ".")]
    assert version, f"kubernetes-validate {kubernetes_validate.__version__}: no {KUBERNETES_VERSION} schemas"
    return json.loads(
        files("kubernetes_validate")
        .joinpath(f"kubernetes-json-schema/v{version[0]}-local-strict/_definitions.json")
        .read_text()
    )


@functools.cache
def custom_resource_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """The committed schema, with its Kubernetes types resolved in the same strict definitions."""
    definitions = strict_definitions()
    registry: Registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = json.loads((SCHEMAS / CUSTOM_RESOURCE_SCHEMAS[(api_version, kind)]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_RESOURCE_SCHEMAS:
        custom_resource_validator(*key).validate(doc)
    else:
        # SchemaNotFoundError for a kind with no schema: an error here, never a pass.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_kustomization_renders() -> None:
    found = kustomizations()
    assert {KUBE / "base", *(KUBE / "overlays" / o for o in OVERLAYS)} <= set(found), found
    for directory in found:
        assert _render(directory).strip(), directory


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates_strictly(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as error:
            where = ".".join(str(p) for p in getattr(error, "path", []))
            message = getattr(error, "message", str(error))
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {message}")


@pytest.mark.parametrize(
    ("overlay", "kind", "path"),
    [
        ("gpu-single", "Deployment", ("spec", "template", "spec", "containers", 0, "startupProbe")),
        ("gpu-single", "ServiceMonitor", ("spec", "endpoints", 0)),
        ("kserve", "InferenceService", ("spec", "transformer", "containers", 0)),
        ("kserve", "InferenceService", ("spec", "predictor", "model")),
    ],
)
def test_validation_refuses_an_unknown_field(overlay: str, kind: str, path: tuple[Any, ...]) -> None:
    """Strict indeed: a misspelt field, in a built-in kind or a custom resource, nested deep, fails."""
    (doc,) = find(render(overlay), kind)
    broken = copy.deepcopy(doc)
    node = broken
    for step in path:
        node = node[step]
    node["pathh"] = "/readyz"
    validate(doc)
    with pytest.raises(jsonschema.ValidationError, match="pathh"):
        validate(broken)


# --- what the service relies on -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_the_three_probes_on_the_right_paths(overlay: str) -> None:
    expected = {
        IMAGE: {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"},
        "tritonserver": {
            "startupProbe": "/v2/health/ready",
            "readinessProbe": "/v2/health/ready",
            "livenessProbe": "/v2/health/live",
        },
    }
    seen = 0
    for pod in pods(render(overlay)):
        for container in pod.containers:
            image = container["image"].split(":")[0].split("/")[-1]
            ports = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe, path in expected[image].items():
                assert container[probe]["httpGet"]["path"] == path, (pod.owner, probe)
                assert container[probe]["httpGet"]["port"] in ports, (pod.owner, probe)
            # Minutes for a TensorRT engine build before the kubelet gives up on the start.
            start = container["startupProbe"]
            assert start["periodSeconds"] * start["failureThreshold"] >= 600, pod.owner
            seen += 1
    assert seen


def graceful_window_s() -> int:
    """uvicorn's --timeout-graceful-shutdown in the images' CMD and in scripts/serve.sh."""
    windows = set()
    for target in ("gpu", "cpu"):
        (cmd,) = [line for line in dockerfile_stages()[target] if line.startswith("CMD")]
        windows.add(int(re.search(r'"--timeout-graceful-shutdown",\s*"(\d+)"', cmd).group(1)))
    serve = (REPO / "scripts" / "serve.sh").read_text()
    windows.add(int(re.search(r"--timeout-graceful-shutdown (\d+)", serve).group(1)))
    (window,) = windows
    return window


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_graceful_window(overlay: str) -> None:
    window = graceful_window_s()
    assert window == 25
    for pod in pods(render(overlay)):
        grace = pod.spec["terminationGracePeriodSeconds"]
        for container in pod.containers:
            pause = 0
            pre_stop = container.get("lifecycle", {}).get("preStop")
            if pre_stop:
                command = pre_stop["exec"]["command"]
                assert command[0] == "sleep", command
                pause = int(command[1])
            assert grace > pause + window, (pod.owner, grace, pause, window)
        command = " ".join(pod.containers[0].get("command", []) + pod.containers[0].get("args", []))
        for flag in ("--timeout-graceful-shutdown", "--exit-timeout-secs="):
            if flag in command:  # a command of the manifest's own keeps the window too
                assert int(re.search(re.escape(flag) + r"\s*(\d+)", command).group(1)) == window, pod.owner


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_gpu_only_where_the_profile_means_one(overlay: str) -> None:
    docs = render(overlay)
    with_gpu = set()
    for pod in pods(docs):
        for container in pod.containers:
            resources = container.get("resources", {})
            assert GPU not in resources.get("requests", {}), pod.owner  # limits only, as device plugins want
            if GPU in resources.get("limits", {}):
                assert int(resources["limits"][GPU]) == 1
                with_gpu.add(f"{pod.owner}/{container['name']}")
    for isvc in find(docs, "InferenceService"):
        if GPU in isvc["spec"]["predictor"]["model"]["resources"].get("limits", {}):
            with_gpu.add(f"InferenceService/{isvc['metadata']['name']}/predictor")
    assert with_gpu == GPU_CONTAINERS[overlay]
    # A pod with a GPU tolerates the GPU nodes' taint; a CPU pod has no business there.
    for pod in pods(docs):
        on_gpu = any(GPU in c.get("resources", {}).get("limits", {}) for c in pod.containers)
        tolerated = any(t.get("key") == GPU for t in pod.spec.get("tolerations", []))
        assert on_gpu == tolerated, pod.owner


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_on_a_read_only_root(overlay: str) -> None:
    docs = render(overlay)
    service_user = int(re.search(r"--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1))
    for pod in pods(docs):
        context = pod.spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, pod.owner
        assert context["seccompProfile"]["type"] == "RuntimeDefault", pod.owner
        assert pod.spec["automountServiceAccountToken"] is False, pod.owner
        for container in pod.containers:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, pod.owner
            assert security.get("privileged", False) is False, pod.owner
            assert security["readOnlyRootFilesystem"] is True, pod.owner
            assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
            if runs_the_service(container):
                assert context["runAsUser"] == service_user == 10001, pod.owner
                assert context["fsGroup"] == service_user, pod.owner  # the key files and the spool
            # A read-only root: a /tmp in memory, bounded (patient images spooled by uploads).
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            empty_dir = pod.volume(tmp["name"])["emptyDir"]
            assert empty_dir["medium"] == "Memory" and empty_dir["sizeLimit"], pod.owner


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_settings_the_service_knows(overlay: str) -> None:
    """app/settings.py refuses an unknown DENOISE_* variable at start-up: a name here that it does
    not know (a typo, or a setting not built yet) is a pod that never starts. Kubernetes' own
    service variables (DENOISE_SERVICE_HOST for a Service named denoise) would be such names, so
    the service links are off."""
    docs = render(overlay)
    known = {f"DENOISE_{name.upper()}" for name in Settings.model_fields}
    checked = 0
    for pod in pods(docs):
        for container in pod.containers:
            if not runs_the_service(container):
                continue
            assert pod.spec["enableServiceLinks"] is False, pod.owner
            names = {name for name in environment(docs, container) if name.startswith("DENOISE_")}
            assert names and names <= known, (pod.owner, sorted(names - known))
            checked += 1
    assert checked


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_point_at_what_the_pod_mounts(overlay: str) -> None:
    docs = render(overlay)
    for pod in pods(docs):
        for container in filter(runs_the_service, pod.containers):
            env = environment(docs, container)
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            # The API keys: a file of the Secret the site creates (docs/KUBERNETES.md), never a value.
            keys = Path(env["DENOISE_API_KEYS_FILE"])
            mount = mounts[str(keys.parent)]
            assert mount["readOnly"] is True
            assert pod.volume(mount["name"])["secret"]["secretName"] == "denoise-api-keys"
            assert "DENOISE_API_KEYS" not in env
            # The models: the image's /models, or a volume mounted over it.
            assert env["DENOISE_MODELS_DIR"] == "/models"
            if "/models" in mounts:
                assert mounts["/models"]["readOnly"] is True
            if overlay == "models-pvc":
                claim = pod.volume(mounts["/models"]["name"])["persistentVolumeClaim"]["claimName"]
                assert find(docs, "PersistentVolumeClaim", claim), claim
            # The provider the pod has: a GPU pod refuses to serve on the CPU.
            on_gpu = GPU in container["resources"].get("limits", {})
            assert env["DENOISE_PROVIDERS"] == ("cuda,cpu" if on_gpu else "cpu"), pod.owner
            assert env["DENOISE_REQUIRE_PROVIDER"] == ("cuda" if on_gpu else "cpu"), pod.owner
            assert container["image"] == f"{IMAGE}:{IMAGE_TAG[overlay]}", pod.owner
    assert not find(docs, "Secret"), "no Secret is committed: the site creates denoise-api-keys"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    docs = render(overlay)
    for pod in pods(docs):
        for volume in pod.spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert find(docs, "PersistentVolumeClaim", claim), (pod.owner, claim)
            if "configMap" in volume:
                assert find(docs, "ConfigMap", volume["configMap"]["name"]), pod.owner
        for container in pod.containers:
            environment(docs, container)  # every configMapRef names a ConfigMap of the render
            names = {v["name"] for v in pod.spec.get("volumes", [])} | {
                t["metadata"]["name"] for t in pod.workload["spec"].get("volumeClaimTemplates", [])
            }
            assert {m["name"] for m in container.get("volumeMounts", [])} <= names, pod.owner
    for isvc in find(docs, "InferenceService"):
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        assert uri.startswith("pvc://"), uri
        assert find(docs, "PersistentVolumeClaim", uri[len("pvc://") :].split("/")[0]), uri


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_monitors_budgets_and_policies_find_their_pods(overlay: str) -> None:
    docs = render(overlay)
    all_pods = [p for p in pods(docs) if p.labels]
    for service in find(docs, "Service"):
        matched = [p for p in all_pods if selects(service["spec"]["selector"], p.labels)]
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for pod in matched:
                names = {p.get("name") for c in pod.containers for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in pod.containers for p in c.get("ports", [])}
                assert port["targetPort"] in names | numbers, (service["metadata"]["name"], port, pod.owner)
    for monitor in find(docs, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in find(docs, "Service") if selects(wanted, s["metadata"]["labels"])]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for service in services:
                names = {p["name"] for p in service["spec"]["ports"]}
                assert endpoint["port"] in names, service["metadata"]["name"]
    for budget in find(docs, "PodDisruptionBudget"):
        assert [p for p in all_pods if selects(budget["spec"]["selector"]["matchLabels"], p.labels)]
        # minAvailable on a single replica would block every node drain.
        assert "minAvailable" not in budget["spec"] and budget["spec"]["maxUnavailable"] == 1
    for policy in find(docs, "NetworkPolicy"):
        assert [p for p in all_pods if selects(policy["spec"]["podSelector"]["matchLabels"], p.labels)]
    if overlay != "kserve":
        (policy,) = [p for p in find(docs, "NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"].get(
            "app.kubernetes.io/name") == IMAGE]
        allowed = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert {8000, 11112} <= allowed
        egress = [port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])]
        assert 53 in egress  # DNS


def adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load((KUBE / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    return rule


def test_the_adapter_serves_the_queue_depth_the_service_exports() -> None:
    rule = adapter_rule()
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)
    assert series == "denoise_queue_tiles" and series in exported_metric_names()
    assert re.fullmatch(rule["name"]["matches"], series)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_adapter_query_is_valid_promql(tmp_path: Path) -> None:
    query = adapter_rule()["metricsQuery"]
    expr = (
        query.replace("<<.Series>>", "denoise_queue_tiles")
        .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"denoise-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in expr
    path = tmp_path / "adapter-rules.yml"
    rules = [{"record": "pod:denoise_queue_tiles", "expr": expr}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_scales_a_stateless_deployment_on_the_queue(overlay: str) -> None:
    docs = render(overlay)
    autoscalers = find(docs, "HorizontalPodAutoscaler")
    assert len(autoscalers) == (1 if overlay == "triton" else 0)
    for hpa in autoscalers:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = one(docs, "Deployment", target["name"])
        # The autoscaler owns the count: a replicas field would reset it on every apply.
        assert "replicas" not in deployment["spec"]
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
        assert metric["pods"]["target"]["type"] == "AverageValue"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (pod,) = [p for p in pods(docs) if p.owner == f"Deployment/{target['name']}"]
        for container in pod.containers:
            env = environment(docs, container)
            # A scaled pod has no spool and no volume of its own.
            assert "DENOISE_SPOOL_DIR" not in env and "DENOISE_FORWARD_TO" not in env
            claims = [m for m in container["volumeMounts"] if "persistentVolumeClaim" in pod.volume(m["name"])]
            assert not claims, claims


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_pod_per_spool(overlay: str) -> None:
    """Two DICOM nodes on one spool would deliver instances twice and race on its folders: the node
    is one replica that never overlaps its successor, and its spool is a volume of its own."""
    docs = render(overlay)
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in find(docs, "HorizontalPodAutoscaler")}
    nodes = 0
    for pod in pods(docs):
        for container in filter(runs_the_service, pod.containers):
            env = environment(docs, container)
            if "DENOISE_FORWARD_TO" not in env:
                assert "DENOISE_DICOM_PORT" not in env
                assert 11112 not in {p["containerPort"] for p in container["ports"]}, pod.owner
                continue
            nodes += 1
            spec = pod.workload["spec"]
            assert spec["replicas"] == 1 and pod.workload["metadata"]["name"] not in scaled, pod.owner
            if pod.workload["kind"] == "Deployment":
                assert spec["strategy"]["type"] == "Recreate", pod.owner
            else:
                assert pod.workload["kind"] == "StatefulSet", pod.owner
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["DENOISE_SPOOL_DIR"]]
            volume = pod.volume(mount["name"])
            if "volumeClaimTemplate" in volume:
                modes = volume["volumeClaimTemplate"]["spec"]["accessModes"]
            else:
                claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
                modes = claim["spec"]["accessModes"]
            assert modes == ["ReadWriteOnce"], pod.owner
            # The node's port: the container's and a Service's.
            port = int(env["DENOISE_DICOM_PORT"])
            assert {"name": "dicom", "containerPort": port, "protocol": "TCP"} in container["ports"]
            assert any(
                p["port"] == port
                for s in find(docs, "Service")
                if selects(s["spec"]["selector"], pod.labels)
                for p in s["spec"]["ports"]
            ), pod.owner
    assert nodes == (0 if overlay == "kserve" else 1)


def test_the_triton_profile_sends_the_front_ends_model_calls_to_triton() -> None:
    """The front ends' Triton URL (DENOISE_INFERENCE_URL) comes from a ConfigMap of its own that
    only they read: the DICOM node runs the models itself."""
    docs = render("triton")
    (prepared,) = [
        c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("denoise-remote-inference")
    ]
    assert prepared["data"] == {"DENOISE_INFERENCE_URL": "http://triton:8000"}
    triton = one(docs, "Service", "triton")
    ports = {(p["name"], p["port"]) for p in triton["spec"]["ports"]}
    assert ports == {("http", 8000), ("grpc", 8001), ("metrics", 8002)}
    readers = [
        pod.owner
        for pod in pods(docs)
        for c in pod.containers
        for source in c.get("envFrom", [])
        if source["configMapRef"]["name"] == prepared["metadata"]["name"]
    ]
    assert "inference_url" in Settings.model_fields  # a pod given an unknown DENOISE_* would not start
    assert readers == ["Deployment/denoise"], "wire denoise-remote-inference into the front ends"
    (container,) = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    # A pinned release, never latest.
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", container["image"]), container["image"]
    assert "--model-repository=/models" in container["args"]


def test_the_kserve_transformer_listens_on_kserves_port() -> None:
    """KServe appends --model_name, --predictor_host and --http_port to a transformer's args;
    app.server would refuse them, so the command is a shell script that reads them itself (next
    test), and the service listens on KServe's port."""
    (isvc,) = find(render("kserve"), "InferenceService")
    (container,) = isvc["spec"]["transformer"]["containers"]
    assert container["name"] == "kserve-container"
    assert "args" not in container
    shell, flag, script, _name = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c") and "exec python -m app.server " in script
    port = int(re.search(r"--port (\d+)", script).group(1))
    assert port == 8080 == container["ports"][0]["containerPort"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port
    predictor = isvc["spec"]["predictor"]["model"]
    assert predictor["modelFormat"]["name"] == "triton" and predictor["protocolVersion"] == "v2"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


@pytest.mark.parametrize(
    ("appended", "preset", "expected"),
    [
        (["--model_name", "denoise", "--predictor_host", "denoise-predictor.radiology", "--http_port", "8080"],
         None, "http://denoise-predictor.radiology"),
        (["--predictor_host=denoise-predictor.radiology:80"], None, "http://denoise-predictor.radiology:80"),
        (["--predictor_host", "denoise-predictor.radiology"], "http://triton.elsewhere:8000", "http://triton.elsewhere:8000"),
        (["--model_name", "denoise"], None, ""),
    ],
)
def test_the_kserve_transformer_sends_its_model_calls_to_the_predictor(
    appended: list[str], preset: str | None, expected: str, tmp_path: Path
) -> None:
    """The transformer's command, run by a real shell with the arguments KServe appends: the
    predictor's host becomes DENOISE_INFERENCE_URL (one set in the ConfigMap wins), and the
    service is started with its own arguments only."""
    (isvc,) = find(render("kserve"), "InferenceService")
    (container,) = isvc["spec"]["transformer"]["containers"]
    shell, flag, script, name = container["command"]
    fake = tmp_path / "python"  # stands in for the interpreter: prints what it was given
    fake.write_text('#!/bin/sh\nprintf "%s|%s" "${DENOISE_INFERENCE_URL:-}" "$*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"} | ({"DENOISE_INFERENCE_URL": preset} if preset else {})
    result = subprocess.run([shell, flag, script, name, *appended], env=env, capture_output=True, text=True, check=True)
    url, args = result.stdout.split("|")
    assert url == expected
    assert args == "-m app.server --host 0.0.0.0 --port 8080 --timeout-graceful-shutdown 25"


def test_the_custom_resource_schemas_name_only_real_fields() -> None:
    """The KServe schema's PodSpec fields are Kubernetes' own (its ComponentExtensionSpec fields are
    KServe's, from the SDK's models; the schema's description says which)."""
    name = CUSTOM_RESOURCE_SCHEMAS[("serving.kserve.io/v1beta1", "InferenceService")]
    schema = json.loads((SCHEMAS / name).read_text())
    pod_spec = strict_definitions()["$defs"]["io.k8s.api.core.v1.PodSpec"]
    extension = {
        "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
        "canaryTrafficPercent", "labels", "annotations",
    }
    for component in ("PredictorSpec", "TransformerSpec"):
        fields = set(schema["$defs"][component]["properties"]) - extension - {"model"}
        assert fields <= set(pod_spec["properties"]), sorted(fields - set(pod_spec["properties"]))


def test_the_docs_describe_every_profile() -> None:
    text = (REPO / "docs" / "KUBERNETES.md").read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/kubernetes/overlays/{overlay}" in text, overlay
    for needed in ("denoise-api-keys", "helm", "issue 18", "denoise_queue_tiles", "one replica"):
        assert needed in text, needed
    readme = (REPO / "README.md").read_text()
    docker_section = readme.split("## Docker on a GPU node", 1)[1].split("\n## ", 1)[0]
    assert "docs/KUBERNETES.md" in docker_section
