"""The cluster files in cluster/, checked offline so that a typo fails CI, not a launch.

- ``ray up`` configs: Ray's own cluster-config JSON schema (ray/autoscaler/ray-schema.json, shipped with the pinned
  Ray) and Ray's own config preparation and validation; the provider-specific parts the schema leaves free
  (``provider``, ``node_config``) against the fields listed below.
- KubeRay manifests and the PVC: there is no CRD offline, so against a field whitelist (below) of the KubeRay v1 API
  and the Kubernetes core/v1 types they use; quantities parse; images and rayVersion match the pinned Ray.
- The runtime env: Ray's list of runtime-env fields.
- Every shipped job config fits the nodes each cluster file offers (srel_ray's own resource check).
"""

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from ray.runtime_env import RuntimeEnv

from srel_ray.config import load_config
from srel_ray.distributed.cluster import check_resources
from srel_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP = ["aws.yaml", "gcp.yaml"]
RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"  # Python 3.11: pyproject's requires-python
IMAGE_ROOT = "/home/ray/srel_ray"  # where cluster/Dockerfile puts the repository in the image


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def walk(value, spec, path: str) -> list[str]:
    """Errors of ``value`` against ``spec``: a dict of allowed keys (``{str: X}``: any keys, values X), ``[X]``: a
    list of X, a set: one of its values, a type, or ``QUANTITY``."""
    if isinstance(spec, dict) and list(spec) == [str]:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        bad_keys = [f"{path}: key {k!r} must be a string" for k in value if not isinstance(k, str)]
        return bad_keys + [e for k, v in value.items() if isinstance(k, str) for e in walk(v, spec[str], f"{path}.{k}")]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        unknown = [f"{path}: unknown field {k!r} (known: {sorted(spec)})" for k in value if k not in spec]
        return unknown + [e for k, v in value.items() if k in spec for e in walk(v, spec[k], f"{path}.{k}")]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, v in enumerate(value) for e in walk(v, spec[0], f"{path}[{i}]")]
    if isinstance(spec, (set, frozenset)):
        return [] if value in spec else [f"{path}: {value!r} is not one of {sorted(spec)}"]
    if spec is QUANTITY:
        return [] if quantity(value) is not None else [f"{path}: {value!r} is not a Kubernetes quantity"]
    if spec is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec) and not (spec is int and isinstance(value, bool))
    return [] if ok else [f"{path}: expected {spec.__name__}, got {value!r}"]


QUANTITY = object()
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40}


def quantity(value) -> float | None:
    """A Kubernetes resource quantity ("500m", "7", 28Gi) as a number; None when it does not parse."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    return None if m is None or isinstance(value, bool) else float(m.group(1)) * _SUFFIX[m.group(2) or ""]


# ---------------------------------------------------------------------------------------------- ray up

# What ``node_config`` may hold: fields of the request each provider's node launcher passes it to (AWS EC2
# RunInstances, as Ray's AWS provider spells them; GCP Compute Engine instances.insert). A subset: add fields from
# those APIs when a config needs them.
EBS = {"VolumeSize": int, "VolumeType": {"gp2", "gp3", "io1", "io2"}, "Iops": int, "Throughput": int,
       "DeleteOnTermination": bool, "Encrypted": bool}
NODE_CONFIG = {
    "aws": {"InstanceType": str, "ImageId": str, "KeyName": str, "SubnetIds": [str], "SecurityGroupIds": [str],
            "IamInstanceProfile": {"Arn": str, "Name": str}, "InstanceMarketOptions": {
                "MarketType": {"spot"}, "SpotOptions": {"MaxPrice": str, "SpotInstanceType": str}},
            "BlockDeviceMappings": [{"DeviceName": str, "Ebs": EBS}],
            "TagSpecifications": [{"ResourceType": str, "Tags": [{"Key": str, "Value": str}]}]},
    "gcp": {"machineType": str, "minCpuPlatform": str, "labels": {str: str}, "tags": {"items": [str]},
            "disks": [{"boot": bool, "autoDelete": bool, "type": {"PERSISTENT", "SCRATCH"}, "initializeParams": {
                "diskSizeGb": int, "sourceImage": str, "diskType": str}}],
            "guestAccelerators": [{"acceleratorType": str, "acceleratorCount": int}],
            "metadata": {"items": [{"key": str, "value": str}]},
            "scheduling": {"provisioningModel": {"SPOT", "STANDARD"}, "instanceTerminationAction": {"DELETE", "STOP"},
                           "onHostMaintenance": {"TERMINATE", "MIGRATE"}, "automaticRestart": bool,
                           "preemptible": bool},
            "serviceAccounts": [{"email": str, "scopes": [str]}]},
}


def ray_up_errors(config: dict) -> list[str]:
    """Everything wrong with a ``ray up`` config that can be known offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path)) or 'config'}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    # The schema lets provider hold anything: its known fields are listed in the schema itself.
    known = schema["properties"]["provider"]["properties"]
    errors += [f"provider: unknown field {k!r}" for k in config.get("provider", {}) if k not in known]
    kind = config.get("provider", {}).get("type")
    for name, node_type in config.get("available_node_types", {}).items():
        errors += walk(node_type.get("node_config", {}), NODE_CONFIG[kind], f"available_node_types.{name}.node_config")
    if not errors:  # Ray's own preparation (defaults merged) and semantic checks, as `ray up` runs them
        try:
            validate_config(prepare_config(copy.deepcopy(config)))
        except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
            errors.append(f"ray: {e}")
    return errors


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_is_valid(name):
    assert ray_up_errors(load(name)) == []


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_pins_ray_scales_gpus_and_installs_the_package(name):
    config = load(name)
    assert config["docker"]["image"] == RAY_IMAGE
    workers = {k: t for k, t in config["available_node_types"].items() if k != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["min_workers"] < t["max_workers"] <= config["max_workers"] for t in gpu)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head schedules no work
    # The checkout is copied to every node and installed from there.
    (mount, source), = config["file_mounts"].items()
    assert source == "." and any(cmd.split()[-1] == mount for cmd in config["setup_commands"] if "pip install" in cmd)
    assert any("/mnt/shared" in cmd for cmd in config["initialization_commands"])  # shared storage


MISSPELT = [  # (file, path to the mapping, key, misspelling)
    ("aws.yaml", [], "max_workers", "max_worker"),
    ("aws.yaml", ["available_node_types", "gpu_worker"], "min_workers", "min_worker"),
    ("aws.yaml", ["available_node_types", "gpu_worker", "node_config"], "InstanceType", "InstanceTyp"),
    ("aws.yaml", ["provider"], "region", "regoin"),
    ("aws.yaml", ["docker"], "image", "imagee"),
    ("gcp.yaml", ["available_node_types", "gpu_worker", "node_config", "scheduling"], "provisioningModel",
     "provisioningMode"),
]


def misspell(config: dict, path: list, key: str, bad: str) -> dict:
    config = copy.deepcopy(config)
    node = config
    for part in path:
        node = node[part]
    node[bad] = node.pop(key)
    return config


@pytest.mark.parametrize("name,path,key,bad", MISSPELT)
def test_a_misspelt_ray_up_key_is_caught(name, path, key, bad):
    errors = ray_up_errors(misspell(load(name), path, key, bad))
    assert any(repr(bad) in e or bad in e for e in errors), errors


# ---------------------------------------------------------------------------------------------- KubeRay

# Field whitelist. Source: the KubeRay v1 API types (ray-project/kuberay, ray-operator/apis/ray/v1/
# raycluster_types.go and rayjob_types.go, KubeRay 1.x) and the Kubernetes core/v1 types (PodTemplateSpec,
# Container, ResourceRequirements, Volume, PersistentVolumeClaimSpec). Only the subset the manifests may need: a
# field outside it fails; add it here, from those types, when a manifest needs it.
STRMAP = {str: str}  # map[string]string: rayStartParams values must be strings ("0", not 0)
RESOURCES = {"requests": {str: QUANTITY}, "limits": {str: QUANTITY}}
ENV = [{"name": str, "value": str}]
CONTAINER = {"name": str, "image": str, "imagePullPolicy": {"Always", "IfNotPresent", "Never"}, "command": [str],
             "args": [str], "env": ENV, "resources": RESOURCES,
             "ports": [{"containerPort": int, "name": str, "protocol": {"TCP", "UDP"}}],
             "volumeMounts": [{"name": str, "mountPath": str, "readOnly": bool, "subPath": str}]}
POD_TEMPLATE = {"metadata": {"labels": STRMAP, "annotations": STRMAP},
                "spec": {"containers": [CONTAINER], "serviceAccountName": str, "nodeSelector": STRMAP,
                         "tolerations": [{"key": str, "operator": {"Exists", "Equal"}, "value": str,
                                          "effect": {"NoSchedule", "PreferNoSchedule", "NoExecute"}}],
                         "volumes": [{"name": str, "persistentVolumeClaim": {"claimName": str, "readOnly": bool},
                                      "emptyDir": {"medium": {"", "Memory"}, "sizeLimit": QUANTITY}}]}}
RAY_CLUSTER_SPEC = {
    "rayVersion": str, "enableInTreeAutoscaling": bool, "suspend": bool, "headServiceAnnotations": STRMAP,
    "autoscalerOptions": {"upscalingMode": {"Default", "Aggressive", "Conservative"}, "idleTimeoutSeconds": int,
                          "resources": RESOURCES, "image": str, "imagePullPolicy": str, "env": ENV},
    "headGroupSpec": {"serviceType": {"ClusterIP", "NodePort", "LoadBalancer"}, "enableIngress": bool,
                      "rayStartParams": STRMAP, "template": POD_TEMPLATE},
    "workerGroupSpecs": [{"groupName": str, "replicas": int, "minReplicas": int, "maxReplicas": int,
                          "numOfHosts": int, "rayStartParams": STRMAP, "template": POD_TEMPLATE}],
}
RAY_JOB_SPEC = {"entrypoint": str, "runtimeEnvYAML": str, "clusterSelector": STRMAP, "metadata": STRMAP,
                "rayClusterSpec": RAY_CLUSTER_SPEC, "submissionMode": {"K8sJobMode", "HTTPMode", "InteractiveMode"},
                "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int, "activeDeadlineSeconds": int,
                "backoffLimit": int, "jobId": str, "suspend": bool, "entrypointNumCpus": float,
                "entrypointNumGpus": float, "entrypointResources": str}
PVC_SPEC = {"accessModes": [{"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}],
            "storageClassName": str, "resources": {"requests": {"storage": QUANTITY}}}
KINDS = {("ray.io/v1", "RayCluster"): RAY_CLUSTER_SPEC, ("ray.io/v1", "RayJob"): RAY_JOB_SPEC,
         ("v1", "PersistentVolumeClaim"): PVC_SPEC}
MANIFESTS = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/storage.yaml"]


def manifest_errors(doc: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        return [f"apiVersion/kind {key} is not one of {sorted(KINDS)}"]
    spec = {"apiVersion": str, "kind": str, "metadata": {"name": str, "namespace": str, "labels": STRMAP,
                                                          "annotations": STRMAP}, "spec": KINDS[key]}
    errors = walk(doc, spec, doc["kind"])
    cluster = doc["spec"] if key[1] == "RayCluster" else doc["spec"].get("rayClusterSpec")
    errors += cluster_spec_errors(cluster) if cluster and not errors else []
    return errors


def cluster_spec_errors(spec: dict) -> list[str]:
    """What the types cannot say: required fields, versions, resources that parse and agree, mounts that exist."""
    errors = [] if spec.get("rayVersion") == ray.__version__ else [f"rayVersion {spec.get('rayVersion')!r} is not "
                                                                    f"the pinned Ray {ray.__version__}"]
    groups = [("headGroupSpec", spec["headGroupSpec"])] + [
        (f"workerGroupSpecs.{g.get('groupName')}", g) for g in spec.get("workerGroupSpecs", [])]
    for where, group in groups:
        pod = group["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            if not c["image"].endswith(f"-ray{ray.__version__}"):
                errors.append(f"{where}: image {c['image']!r} is not built for Ray {ray.__version__}")
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            if requests.get("nvidia.com/gpu") != limits.get("nvidia.com/gpu"):
                errors.append(f"{where}: GPU requests and limits must be equal")
            errors += [f"{where}: request {k} exceeds its limit" for k in requests
                       if k in limits and quantity(requests[k]) > quantity(limits[k])]
            errors += [f"{where}: volumeMount {m['name']!r} has no volume" for m in c.get("volumeMounts", [])
                       if m["name"] not in volumes]
    for where, group in groups[1:]:
        if not 0 <= group.get("minReplicas", 0) <= group.get("replicas", 0) <= group["maxReplicas"]:
            errors.append(f"{where}: needs 0 <= minReplicas <= replicas <= maxReplicas")
    return errors


def kuberay_shapes(spec: dict) -> list[dict]:
    """The nodes a RayCluster spec can have, as srel_ray's resource check sees them (KubeRay derives a pod's Ray
    CPUs and GPUs from its container limits unless rayStartParams sets them)."""
    def shape(name, group, count):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        params = group["rayStartParams"]
        return {"name": name, "count": count,
                "CPU": float(params.get("num-cpus", quantity(limits.get("cpu", 0)))),
                "GPU": float(params.get("num-gpus", quantity(limits.get("nvidia.com/gpu", 0))))}

    return [shape("head", spec["headGroupSpec"], 1)] + [
        shape(g["groupName"], g, g["maxReplicas"]) for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_manifest_is_valid(name):
    assert manifest_errors(load(name)) == []


def test_rayjob_runs_on_the_raycluster_with_its_storage_and_a_shipped_config():
    cluster, job, pvc = (load(m) for m in MANIFESTS)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for g in [cluster["spec"]["headGroupSpec"],
                                                                *cluster["spec"]["workerGroupSpecs"]]
              for v in g["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {pvc["metadata"]["name"]} and "ReadWriteMany" in pvc["spec"]["accessModes"]
    argv = shlex.split(job["spec"]["entrypoint"])
    script, config, out = argv[1], argv[argv.index("--config") + 1], argv[argv.index("--out") + 1]
    for path in (script, config):  # paths inside the image map to the repository
        assert path.startswith(IMAGE_ROOT + "/") and (REPO / path[len(IMAGE_ROOT) + 1:]).is_file(), path
    assert out.startswith("/mnt/shared/")  # the run folder is on the shared volume
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(env) <= RuntimeEnv.known_fields


KUBERAY_MISSPELT = [
    ("kuberay/raycluster.yaml", ["spec"], "workerGroupSpecs", "workerGroupSpec"),
    ("kuberay/raycluster.yaml", ["spec", "workerGroupSpecs", 0], "maxReplicas", "maxReplica"),
    ("kuberay/raycluster.yaml", ["spec", "headGroupSpec", "template", "spec", "containers", 0], "image", "imagee"),
    ("kuberay/rayjob.yaml", ["spec"], "entrypoint", "entryPoint"),
    ("kuberay/storage.yaml", ["spec"], "accessModes", "accessMode"),
]


@pytest.mark.parametrize("name,path,key,bad", KUBERAY_MISSPELT)
def test_a_misspelt_kuberay_field_is_caught(name, path, key, bad):
    errors = manifest_errors(misspell(load(name), path, key, bad))
    assert any(repr(bad) in e for e in errors), errors


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "expected str"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update({"memory": "28 GiB"}), "not a Kubernetes quantity"),
    (lambda c: c["spec"].update({"rayVersion": "2.9.0"}), "not the pinned Ray"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
        {"image": "rayproject/ray:2.9.0-gpu"}), "not built for Ray"),
], ids=["int-start-param", "bad-quantity", "ray-version", "image-tag"])
def test_kuberay_value_mistakes_are_caught(edit, expected):
    cluster = load("kuberay/raycluster.yaml")
    edit(cluster)
    assert any(expected in e for e in manifest_errors(cluster))


# ---------------------------------------------------------------------------------------------- image, runtime env


def test_dockerfile_builds_on_the_pinned_ray_and_copies_what_exists():
    lines = [line.split() for line in (CLUSTER / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == ["FROM", RAY_IMAGE]
    assert ["WORKDIR", IMAGE_ROOT] in lines
    copied = [p for line in lines if line[0] == "COPY" for p in line[1:-1] if not p.startswith("--")]
    assert copied and all((REPO / p).exists() for p in copied)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    assert ray.__version__ in SpecifierSet(ray_pin.split("]", 1)[1])  # the image's Ray is the one the tests run


def test_runtime_env_has_only_ray_runtime_env_fields():
    env = load("runtime_env.yaml")
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)  # Ray's own type checks (env_vars values must be strings, ...)
    env["working_dri"] = env.pop("working_dir")
    assert not set(env) <= RuntimeEnv.known_fields


# ---------------------------------------------------------------------------------------------- the configs fit


def ray_up_shapes(config: dict) -> list[dict]:
    return [{"name": name, "count": 1 if name == config["head_node_type"] else t["max_workers"],
             "CPU": t["resources"].get("CPU", 0), "GPU": t["resources"].get("GPU", 0)}
            for name, t in config["available_node_types"].items()]


CLUSTER_SHAPES = {"aws.yaml": lambda: ray_up_shapes(load("aws.yaml")),
                  "gcp.yaml": lambda: ray_up_shapes(load("gcp.yaml")),
                  "kuberay": lambda: kuberay_shapes(load("kuberay/raycluster.yaml")["spec"])}


@pytest.mark.parametrize("cluster", sorted(CLUSTER_SHAPES))
def test_imagenet_config_fits_each_cluster(cluster):
    cfg = load_config(REPO / "jobs" / "configs" / "imagenet1k.yaml")
    check_resources(cfg.resources, use_gpu=True, shapes=CLUSTER_SHAPES[cluster]())


@pytest.mark.parametrize("override,message", [
    ("resources.cpus_per_actor=16", "no node can host recover and relabel actors asking for 16 CPU, 1 GPU"),
    ("resources.gpus_per_actor=2", "no node can host recover and relabel actors asking for 4 CPU, 2 GPU"),
    ("resources.recover_actors=9", "9 recover and relabel actors asking for 4 CPU, 1 GPU each cannot all be placed"),
    ("resources.train_workers=9", "9 Ray Train workers"),
    ("resources.concurrent_students=2", "16 Ray Train workers of 2 students trained at once asking for 4 CPU, 1 GPU "
                                        "each cannot all be placed: the cluster holds at most 8"),
])
def test_requests_a_cluster_cannot_meet_are_refused(override, message):
    cfg = load_config(REPO / "jobs" / "configs" / "imagenet1k.yaml", [override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_resources(cfg.resources, use_gpu=True, shapes=CLUSTER_SHAPES["aws.yaml"]())


def test_gpu_relabel_leaves_a_cpu_to_render_views():
    """GPU labelers hold their CPUs; the view-rendering tasks need one more, or relabel would wait forever."""
    node = [{"name": "node a", "count": 1, "CPU": 2, "GPU": 2}]
    res = load_config(overrides=["resources.relabel_actors=2", "resources.recover_actors=2",
                                 "resources.cpus_per_actor=1"]).resources
    with pytest.raises(ConfigError, match=re.escape("2 relabel actors asking for 1 CPU each hold 2 of the "
                                                    "cluster's 2 CPUs")):
        check_resources(res, use_gpu=True, shapes=node)
    check_resources(res, use_gpu=False, shapes=node)  # on CPUs the rendering runs inside the actors
    check_resources(load_config(overrides=["resources.relabel_actors=2", "resources.cpus_per_actor=0.5"]).resources,
                    use_gpu=True, shapes=node)



def test_train_workers_leave_a_cpu_to_read_their_data():
    """Ray Train's datasets are read by Ray tasks of 1 CPU beside the workers; workers holding every CPU would
    leave a student waiting forever at its first test pass (data held in memory needs no task)."""
    node = [{"name": "node a", "count": 1, "CPU": 2, "GPU": 0}]
    res = load_config(overrides=["resources.threads_per_worker=2"]).resources
    with pytest.raises(ConfigError, match=re.escape("Ray Train workers holding 2 CPUs (1 student(s) at once x 1 "
                                                    "worker(s) x 2 thread(s)) leave none of the cluster's 2")):
        check_resources(res, use_gpu=False, shapes=node)
    check_resources(res, use_gpu=False, shapes=node, data_tasks=False)
    check_resources(res, use_gpu=False, shapes=[{**node[0], "CPU": 3}])
    at_once = load_config(overrides=["resources.concurrent_students=2"]).resources
    with pytest.raises(ConfigError, match=re.escape("holding 2 CPUs (2 student(s) at once x 1 worker(s)")):
        check_resources(at_once, use_gpu=False, shapes=node)
