"""The deployment files (deploy/) are valid for their targets and agree with the service."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import attrs
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"  # a version kubernetes-validate (requirements/dev.txt) bundles
SERVING = sorted(KUBERNETES.glob("*.yaml"))
PYTORCHJOB = KUBERNETES / "training" / "pytorchjob.yaml"
DEPLOYMENTS = {"cpu": KUBERNETES / "deployment-cpu.yaml", "gpu": KUBERNETES / "deployment-gpu.yaml"}
CONTAINER_PORT = 3000  # what the bento's Dockerfile exposes (tests/test_service_build.py)
IMAGE_PLACEHOLDER = "registry.example.com/seqserve:REPLACE_WITH_VERSION"  # docs/deploy.md


def load(path: Path) -> dict[str, Any]:
    """The one YAML document in `path`."""
    (document,) = yaml.safe_load_all(path.read_text())
    return document


def validate(resource: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError unless `resource` fits the pinned schema
    (strict: an unknown field fails too)."""
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(deployment)["env"]}


def differences(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths (dotted, list items by `name` or index) where `a` and `b` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {
            p
            for key in a.keys() | b.keys()
            for p in differences(a.get(key), b.get(key), f"{path}.{key}")
        }
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        keys = [item.get("name", i) if isinstance(item, dict) else i for i, item in enumerate(a)]
        return {
            p
            for key, x, y in zip(keys, a, b, strict=True)
            for p in differences(x, y, f"{path}[{key}]")
        }
    return set() if a == b else {path}


def test_the_manifests_are_the_documented_ones() -> None:
    names = {path.name for path in SERVING}
    assert names == {"deployment-cpu.yaml", "deployment-gpu.yaml", "service.yaml", "pdb.yaml",
                     "hpa-cpu.yaml", "hpa-queue.yaml", "prometheus-adapter-rules.yaml"}  # fmt: skip
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert all(name in docs for name in names | {"pytorchjob.yaml", "bentocloud.yaml"})


@pytest.mark.parametrize("path", SERVING, ids=lambda p: p.name)
def test_manifest_is_valid_for_the_pinned_kubernetes(path: Path) -> None:
    validate(load(path))


def test_a_broken_manifest_fails_validation() -> None:
    """The check has teeth: a misspelt field and a wrongly typed one are each refused."""
    deployment = load(DEPLOYMENTS["cpu"])
    misspelt = copy.deepcopy(deployment)
    container(misspelt)["readinesProbe"] = container(misspelt).pop("readinessProbe")
    mistyped = copy.deepcopy(deployment)
    container(mistyped)["ports"][0]["containerPort"] = "three thousand"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)


@pytest.mark.parametrize("variant", DEPLOYMENTS)
def test_probes_ask_the_service_on_its_port(variant: str) -> None:
    spec = container(load(DEPLOYMENTS[variant]))
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports == {"http": CONTAINER_PORT}
    paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in paths.items():
        assert spec[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert spec["image"] == IMAGE_PLACEHOLDER


@pytest.mark.parametrize("variant", DEPLOYMENTS)
def test_settings_and_grace_period_agree_with_the_service(variant: str) -> None:
    deployment = load(DEPLOYMENTS[variant])
    env = env_of(deployment)
    seqserve = {name: value for name, value in env.items() if name.startswith("SEQSERVE_")}
    settings = Settings.from_env(seqserve)  # a misspelt name or malformed value fails here
    known = {f"SEQSERVE_{field.name.upper()}" for field in dataclasses.fields(Settings)}
    assert set(seqserve) <= known
    assert settings.request_timeout_s == Settings().request_timeout_s  # the documented default
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.request_timeout_s + float(pre_stop[1])


def test_cpu_and_gpu_deployments_differ_only_as_intended() -> None:
    cpu, gpu = load(DEPLOYMENTS["cpu"]), load(DEPLOYMENTS["gpu"])
    pod = ".spec.template.spec"
    app = f"{pod}.containers[seqserve]"
    assert differences(cpu, gpu) == {
        f"{pod}.tolerations",
        f"{app}.env[SEQSERVE_WORKERS].value",
        f"{app}.env[SEQSERVE_TORCH_THREADS].value",
        f"{app}.env[SEQSERVE_GPUS].value",
        f"{app}.resources.requests.cpu",
        f"{app}.resources.requests.memory",
        f"{app}.resources.requests.nvidia.com/gpu",
        f"{app}.resources.limits.memory",
        f"{app}.resources.limits.nvidia.com/gpu",
        f"{app}.startupProbe.failureThreshold",
    }
    cpu_env, gpu_env = env_of(cpu), env_of(gpu)
    # docs/service.md's worker rule: one process feeds a GPU, two use a 2-core CPU replica
    assert (cpu_env["SEQSERVE_WORKERS"], gpu_env["SEQSERVE_WORKERS"]) == ("2", "1")
    assert float(cpu_env["SEQSERVE_GPUS"]) == 0 and float(gpu_env["SEQSERVE_GPUS"]) == 1
    limits = container(gpu)["resources"]["limits"]
    assert (
        limits["nvidia.com/gpu"] == 1 == container(gpu)["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_service_budget_and_autoscalers_point_at_the_deployment() -> None:
    deployment = load(DEPLOYMENTS["cpu"])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, budget = load(KUBERNETES / "service.yaml"), load(KUBERNETES / "pdb.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for name in ("hpa-cpu.yaml", "hpa-queue.yaml"):
        target = load(KUBERNETES / name)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_queue_autoscaler_uses_the_service_metric() -> None:
    from service.metrics import metrics

    (family,) = metrics().queue_rows.describe()
    (metric,) = load(KUBERNETES / "hpa-queue.yaml")["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == family.name == "seqserve_queue_rows"
    adapter = yaml.safe_load(
        load(KUBERNETES / "prometheus-adapter-rules.yaml")["data"]["config.yaml"]
    )
    (rule,) = adapter["rules"]
    assert rule["seriesQuery"].startswith(family.name + "{")
    assert rule["name"]["as"] == family.name


def test_pytorchjob_structure() -> None:
    """kubernetes-validate has no schema for the Kubeflow CRD: the job's own fields are checked
    here by hand, and each pod template against Kubernetes' PodTemplate schema."""
    job = load(PYTORCHJOB)
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert set(job) == {"apiVersion", "kind", "metadata", "spec"} and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= {"elasticPolicy", "nprocPerNode", "pytorchReplicaSpecs", "runPolicy"}
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(replica["replicas"] for replica in replicas.values())
    elastic = spec["elasticPolicy"]
    assert (
        elastic["rdzvBackend"] == "c10d"
        and elastic["minReplicas"] == elastic["maxReplicas"] == nodes
    )
    for role, replica in replicas.items():
        assert set(replica) <= {"replicas", "restartPolicy", "template"}, role
        assert replica["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                    "template": replica["template"]}  # fmt: skip
        validate(template)
        (trainer,) = replica["template"]["spec"]["containers"]
        assert trainer["name"] == "pytorch"  # the operator finds the container by this name
        command = trainer["command"]
        assert (
            command[:2] == ["torchrun", "-m"]
            and (ROOT / (command[2].replace(".", "/") + ".py")).is_file()
        )


def test_bentocloud_config_fits_bentoml_deployment_schema() -> None:
    """`bentoml deploy -f deploy/bentocloud.yaml` cannot run here: the file is structured with the
    classes BentoML 1.4.40 sends to BentoCloud, and no key is one they would silently drop."""
    from bentoml._internal.cloud.schemas.modelschemas import DeploymentServiceConfig
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.cloud.schemas.utils import cloud_converter

    config = yaml.safe_load((ROOT / "deploy" / "bentocloud.yaml").read_text())
    schema = cloud_converter.structure({**config, "bento": "seqserve:test"}, CreateDeploymentSchema)
    assert set(config) <= {field.name for field in attrs.fields(CreateDeploymentSchema)}
    service_class = load(ROOT / "bentofile.yaml")["service"].rsplit(":", 1)[1]
    assert set(schema.services) == {service_class}
    (service,) = config["services"].values()
    assert set(service) <= {field.name for field in attrs.fields(DeploymentServiceConfig)}
    scaling = schema.services[service_class].scaling
    assert 1 <= scaling.min_replicas <= scaling.max_replicas
    envs = schema.envs + schema.services[service_class].envs
    assert len({env.name for env in envs}) == len(envs)
    Settings.from_env({env.name: env.value for env in envs if env.name.startswith("SEQSERVE_")})
