"""infra/ validates offline.

References: Ray's own cluster-launcher schema and config preparation shipped in the ray package
(`ray/autoscaler/ray-schema.json`, `prepare_config` + `validate_config`, what `ray up` runs);
KubeRay's v1 RayCluster/RayJob required fields (from the CRD: rayVersion, headGroupSpec.template,
workerGroupSpecs[].groupName/template, RayJob entrypoint + rayClusterSpec); YAML parsing for the
compose file; requirements.txt for the pinned versions.
"""
import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"


def pinned(package: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(rf"{re.escape(package)}(\[[^\]]*\])?==([^\s#]+)", line.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"{package} not pinned in requirements.txt")


RAY, MLFLOW = pinned("ray"), pinned("mlflow")


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_ray_launcher_config_passes_rays_own_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / name).read_text())
    jsonschema.validate(config, ray_schema())  # as written
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` fills and checks it
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu_types = [t for n, t in types.items() if n != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0  # CPU head
    assert gpu_types and all(0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in gpu_types)
    assert any("pip install -r ~/symm/requirements.txt" in c for c in config["setup_commands"])
    assert any("--num-gpus=0" in c for c in config["head_start_ray_commands"])


def test_ray_schema_rejects_a_broken_config():
    """The check above can fail: a misspelt key and a wrong type are schema errors."""
    config = yaml.safe_load((INFRA / "ray" / "aws.yaml").read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())
    broken = copy.deepcopy(config)
    broken["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def _containers(template: dict) -> list[dict]:
    assert template["spec"]["containers"], "a pod template needs containers"
    for c in template["spec"]["containers"]:
        assert c["name"] and c["image"]
    return template["spec"]["containers"]


def check_raycluster_spec(spec: dict, pvc_name: str) -> None:
    assert spec["rayVersion"] == RAY
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    for c in _containers(head["template"]):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})
        assert RAY in c["image"]
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = [g for g in groups if any(c["resources"]["limits"].get("nvidia.com/gpu") for c in _containers(g["template"]))]
    assert gpu, "a GPU worker group"
    for template in [head["template"]] + [g["template"] for g in groups]:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert pvc_name in claims  # shared storage on every pod
        mounts = {m["mountPath"] for c in template["spec"]["containers"] for m in c["volumeMounts"]}
        env = {e["name"]: e.get("value") for c in template["spec"]["containers"] for e in c["env"]}
        assert any(env["SYMM_STORAGE_PATH"].startswith(m) for m in mounts)
        assert any(env["SYMM_PREPARED_ROOT"].startswith(m) for m in mounts)
        secret_env = [e for c in template["spec"]["containers"] for e in c["env"] if "PASSWORD" in e["name"]]
        assert secret_env and all("secretKeyRef" in e["valueFrom"] for e in secret_env)  # no password literals


def test_kuberay_manifests_have_the_required_fields():
    storage = yaml.safe_load((INFRA / "kuberay" / "storage.yaml").read_text())
    assert storage["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in storage["spec"]["accessModes"]
    pvc = storage["metadata"]["name"]
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster") and cluster["metadata"]["name"]
    check_raycluster_spec(cluster["spec"], pvc)
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    assert job["spec"]["entrypoint"].startswith("python -m pipelines.sweep")
    check_raycluster_spec(job["spec"]["rayClusterSpec"], pvc)
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]  # one cluster definition
    dockerfile = (INFRA / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY}-" in dockerfile and "requirements.txt" in dockerfile


def test_kuberay_check_can_fail():
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    broken = copy.deepcopy(cluster["spec"])
    del broken["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(KeyError):
        check_raycluster_spec(broken, "symm-shared")
    broken = copy.deepcopy(cluster["spec"])
    broken["rayVersion"] = "2.9.0"
    with pytest.raises(AssertionError):
        check_raycluster_spec(broken, "symm-shared")


def test_mlflow_compose_parses_with_secrets_only_from_the_environment():
    text = (INFRA / "mlflow" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    mlflow = services["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["build"] == "." and MLFLOW in mlflow["image"]
    for service in services.values():  # every secret is an ${VAR:?...} interpolation, never a literal
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (key, value)
    for value in env.values():
        if "postgresql://" in value:
            assert "${POSTGRES_PASSWORD:?" in value
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{MLFLOW}" in dockerfile
    assert "psycopg2" in dockerfile and "boto3" in dockerfile and f"mlflow[auth]=={MLFLOW}" in dockerfile
    entry = (INFRA / "mlflow" / "entrypoint.sh").read_text()
    assert "--app-name basic-auth" in entry and "--artifacts-destination" in entry
    assert not list((INFRA / "mlflow").rglob("*.env")) and not list((INFRA / "mlflow").rglob("*.ini"))


def test_launcher_configs_pin_nothing_but_requirements():
    """No infra file names a Ray or MLflow version other than requirements.txt's."""
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for found in re.findall(r"ray(?:\[[^\]]*\])?==([0-9.]+)|rayproject/ray:([0-9.]+)|rayVersion: \"([0-9.]+)\"", text):
                assert RAY in found, (path, found)
            for found in re.findall(r"mlflow(?:\[[^\]]*\])?==([0-9.]+)|mlflow/mlflow:v([0-9.]+)", text):
                assert MLFLOW in found, (path, found)


def test_rayignore_keeps_the_upload_small_but_ships_the_code():
    """What `ray job submit --working-dir .` uploads, using Ray's own ignore-file matching."""
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    excludes = get_excludes_from_ignore_files(REPO, include_gitignore=True)
    excluded = lambda rel: any(f(REPO / rel) for f in excludes)  # noqa: E731
    for rel in (".git/HEAD", ".venv/bin/python", "data/prepared/glyphs/manifest.json", "results/sweep.json",
                "ray_results/x/result.json", "mlflow.db", "mlartifacts/1/x"):
        assert excluded(rel), rel
    for rel in ("symm/data/glyphs.py", "symm/data/x/y.py", "pipelines/sweep.py", "params.yaml", "requirements.txt"):
        assert not excluded(rel), rel
