"""Checks of the launch configs in ``cluster/`` (pure: no Ray is started, no cloud is called).

* ``cluster/ray-up.yaml`` validates against the JSON schema Ray ships with its autoscaler and
  passes Ray's own ``validate_config``; broken copies of it are rejected.
* Every ``ray start`` in it runs with ``RAY_AUTH_MODE=token`` and a token path that
  ``file_mounts`` puts on every node.
* The KubeRay manifests carry the fields KubeRay requires, every Ray container (and the
  autoscaler and the RayJob submitter) gets the token from the Secret of
  ``cluster/kuberay/token-secret.yaml``, and the RayJob runs a valid ``shardyard demo``.
"""

from __future__ import annotations

import copy
import json
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
RAY_UP = CLUSTER / "ray-up.yaml"
KUBERAY = CLUSTER / "kuberay"
TOKEN_KEY = "auth_token"  # the Secret's data key; also what KubeRay's authOptions expects


def _load(path: Path) -> Any:
    """The single YAML document of ``path``."""
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    return docs[0]


def _ray_schema() -> dict[str, Any]:
    """The cluster-config schema of the installed Ray (ray/autoscaler/ray-schema.json)."""
    schema: dict[str, Any] = json.loads(
        files("ray.autoscaler").joinpath("ray-schema.json").read_text()
    )
    return schema


# ----------------------------------------------------------------------------- ray up


def test_ray_up_matches_rays_schema() -> None:
    """cluster/ray-up.yaml is valid for the ray-schema.json of the installed Ray."""
    jsonschema.validate(_load(RAY_UP), _ray_schema())


def test_ray_up_passes_rays_own_validator() -> None:
    """Ray's ``ray up`` path: merge the AWS defaults, then ``validate_config`` (offline)."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(_load(RAY_UP)))
    util.validate_config(prepared)
    # The merge kept our node types and did not bring back Ray's default ones.
    assert set(prepared["available_node_types"]) == {"ray.head.default", "ray.worker.default"}


def _misspelled_key(cfg: dict[str, Any]) -> None:
    cfg["max_worker"] = cfg.pop("max_workers")


def _wrong_type(cfg: dict[str, Any]) -> None:
    cfg["max_workers"] = "four"


def _fractional_resource(cfg: dict[str, Any]) -> None:
    cfg["available_node_types"]["ray.worker.default"]["resources"] = {"CPU": 0.5}


def _node_type_without_node_config(cfg: dict[str, Any]) -> None:
    del cfg["available_node_types"]["ray.worker.default"]["node_config"]


def _unknown_auth_field(cfg: dict[str, Any]) -> None:
    cfg["auth"]["ssh_usr"] = "ubuntu"


@pytest.mark.parametrize(
    "breakage",
    [
        _misspelled_key,
        _wrong_type,
        _fractional_resource,
        _node_type_without_node_config,
        _unknown_auth_field,
    ],
)
def test_broken_ray_up_is_rejected(breakage: Any) -> None:
    """The schema check has teeth: each single breakage of the config fails it."""
    cfg = _load(RAY_UP)
    breakage(cfg)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _ray_schema())


def _ray_start_envs(command: str) -> list[dict[str, str]]:
    """The ``NAME=value`` assignments in front of each ``ray start`` of a shell command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in {";", "&&", "||", "|", "&"}:
            segments.append([])
        else:
            segments[-1].append(token)
    envs = []
    for words in segments:
        env: dict[str, str] = {}
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if words[:2] == ["ray", "start"]:
            envs.append(env)
    return envs


def _token_problems(commands: list[str], token_paths: set[str]) -> list[str]:
    """What is wrong with the token setup of a start-command list (empty: nothing)."""
    problems = []
    starts = [env for command in commands for env in _ray_start_envs(command)]
    if not starts:
        problems.append("no `ray start`")
    if sum(command.count("ray start") for command in commands) != len(starts):
        problems.append("a `ray start` the check cannot see the environment of")
    for env in starts:
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"`ray start` without RAY_AUTH_MODE=token: {env}")
        if env.get("RAY_AUTH_TOKEN_PATH") not in token_paths and not env.get("RAY_AUTH_TOKEN"):
            problems.append(f"`ray start` without a mounted RAY_AUTH_TOKEN_PATH: {env}")
    return problems


def test_token_check_catches_a_bare_ray_start() -> None:
    """The checker below flags a ``ray start`` without the token variables."""
    assert _ray_start_envs("ulimit -n 65536; ray start --head") == [{}]
    assert _token_problems(["ray stop", "ulimit -n 65536; ray start --head"], {"/t"})
    assert _token_problems(["RAY_AUTH_MODE=token ray start --head"], {"/t"})
    assert _token_problems(["env RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/t ray start"], {"/t"})
    assert not _token_problems(["RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/t ray start"], {"/t"})


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_ray_start_uses_the_mounted_token(key: str) -> None:
    """Each ``ray start`` runs with RAY_AUTH_MODE=token and a token file file_mounts copies,
    after a ``ray stop``."""
    cfg = _load(RAY_UP)
    commands: list[str] = cfg[key]
    assert _token_problems(commands, set(cfg["file_mounts"])) == []
    first_stop = next(i for i, c in enumerate(commands) if "ray stop" in c)
    first_start = next(i for i, c in enumerate(commands) if _ray_start_envs(c))
    assert first_stop < first_start


def test_ray_up_ships_the_token_and_installs_shardyard() -> None:
    """The token goes from ~/.shardyard to Ray's default path on the nodes; setup installs
    Ray 2.60 and shardyard; the node types are consistent."""
    cfg = _load(RAY_UP)
    mounts: dict[str, str] = cfg["file_mounts"]
    token_remote = "/home/" + cfg["auth"]["ssh_user"] + "/.ray/auth_token"
    assert mounts[token_remote] == "~/.shardyard/cluster-token"
    setup = " ".join(cfg["setup_commands"])
    assert 'pip install -U "ray[default]==2.60.0"' in setup
    assert any(c.startswith("pip install") and "shardyard" in c for c in cfg["setup_commands"])
    # The wheel's directory on the nodes is one that file_mounts fills.
    wheel_cmd = next(c for c in cfg["setup_commands"] if "shardyard-dist" in c)
    assert any(wheel_cmd.split()[-1].startswith(remote + "/") for remote in mounts)

    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers
    for t in types.values():
        assert {"InstanceType", "ImageId"} <= set(t["node_config"])
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert sum(t.get("min_workers", 0) for t in workers) <= cfg["max_workers"]


# ----------------------------------------------------------------------------- KubeRay


def _secret_name() -> str:
    name: str = _load(KUBERAY / "token-secret.yaml")["metadata"]["name"]
    return name


def _env_token_problems(env: list[dict[str, Any]], secret: str) -> list[str]:
    """What is missing from a container's env for Ray token auth (empty: nothing)."""
    by_name = {e["name"]: e for e in env}
    problems = []
    if by_name.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append("RAY_AUTH_MODE=token")
    ref = by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    has_token_path = "RAY_AUTH_TOKEN_PATH" in by_name
    if ref != {"name": secret, "key": TOKEN_KEY} and not has_token_path:
        problems.append(f"RAY_AUTH_TOKEN from secret {secret}/{TOKEN_KEY}")
    return problems


def _mounted_path_problems(
    container: dict[str, Any], pod: dict[str, Any], secret: str
) -> list[str]:
    """With RAY_AUTH_TOKEN_PATH, the file must come from a volume of the token Secret."""
    env = {e["name"]: e for e in container.get("env", [])}
    if "RAY_AUTH_TOKEN_PATH" not in env:
        return []
    path = env["RAY_AUTH_TOKEN_PATH"]["value"]
    secret_volumes = {
        v["name"] for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == secret
    }
    for m in container.get("volumeMounts", []):
        if m["name"] in secret_volumes and path.startswith(m["mountPath"].rstrip("/") + "/"):
            return []
    return [f"RAY_AUTH_TOKEN_PATH {path} not mounted from secret {secret}"]


def _cluster_token_problems(spec: dict[str, Any], secret: str) -> dict[str, list[str]]:
    """Token problems of each Ray container of a RayCluster spec, by container name."""
    pods = [spec["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in spec.get("workerGroupSpecs", [])]
    found = {}
    for pod in pods:
        for c in pod["containers"]:
            problems = _env_token_problems(c.get("env", []), secret)
            problems += _mounted_path_problems(c, pod, secret)
            if problems:
                found[c["name"]] = problems
    if spec.get("enableInTreeAutoscaling"):
        autoscaler_env = spec.get("autoscalerOptions", {}).get("env", [])
        problems = _env_token_problems(autoscaler_env, secret)
        if problems:
            found["autoscaler"] = problems
    return found


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    """The RayCluster spec fields KubeRay needs, and the same image everywhere."""
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    # KubeRay builds the `ray start` line from these: the values must be strings.
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    images = [c["image"] for c in head["template"]["spec"]["containers"]]
    assert images
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers
        images += [c["image"] for c in containers]
    assert all(images), "a Ray container without an image"
    assert len(set(images)) == 1, f"head and workers must run one image: {set(images)}"
    # The image carries the same Ray as rayVersion.
    assert f"ray{spec['rayVersion']}" in images[0] or f"ray:{spec['rayVersion']}" in images[0]
    # The operator handles token auth with the same Secret (KubeRay >= 1.6).
    assert spec["authOptions"] == {"mode": "token", "secretName": _secret_name()}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "token-secret.yaml"])
def test_kuberay_manifests_parse(name: str) -> None:
    """Each manifest is one YAML document with apiVersion, kind and metadata.name."""
    doc = _load(KUBERAY / name)
    assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_raycluster_manifest() -> None:
    """The RayCluster: ray.io/v1, the required fields, the token in every Ray container."""
    doc = _load(KUBERAY / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])
    assert _cluster_token_problems(doc["spec"], _secret_name()) == {}


def test_token_check_catches_a_container_without_the_token() -> None:
    """The container check flags a worker whose env lost the token, or names another
    Secret."""
    spec = _load(KUBERAY / "raycluster.yaml")["spec"]
    secret = _secret_name()
    broken = copy.deepcopy(spec)
    broken["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = []
    assert list(_cluster_token_problems(broken, secret)) == ["ray-worker"]
    assert set(_cluster_token_problems(spec, "another-secret")) == {
        "ray-head",
        "ray-worker",
        "autoscaler",
    }


def test_token_file_variant_must_come_from_the_secret() -> None:
    """RAY_AUTH_TOKEN_PATH instead of RAY_AUTH_TOKEN passes only if the file is mounted from
    the token Secret."""
    env = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN_PATH", "value": "/etc/ray-token/auth_token"},
    ]
    container = {"name": "ray-head", "env": env}
    mounted = {**container, "volumeMounts": [{"name": "tok", "mountPath": "/etc/ray-token"}]}
    pod = {"volumes": [{"name": "tok", "secret": {"secretName": "s"}}]}
    assert _env_token_problems(env, "s") == []
    assert _mounted_path_problems(mounted, pod, "s") == []
    assert _mounted_path_problems(container, pod, "s")  # not mounted
    assert _mounted_path_problems(mounted, pod, "other")  # another Secret


def test_rayjob_manifest() -> None:
    """The RayJob: ray.io/v1, a valid shardyard entrypoint, cleanup after the job, a
    submitter with the token, and the RayCluster's spec."""
    doc = _load(KUBERAY / "rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]

    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "shardyard", "demo"]
    from shardyard.cli import build_parser

    args = build_parser().parse_args(argv[3:])  # the flags exist and parse
    assert args.address == "auto"

    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0

    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] in {"Never", "OnFailure"}  # a Kubernetes Job's pod
    container = submitter["containers"][0]
    assert container["image"]
    assert "command" not in container  # KubeRay fills in `ray job submit ...`
    assert _env_token_problems(container.get("env", []), _secret_name()) == []

    cluster_spec = spec["rayClusterSpec"]
    _check_cluster_spec(cluster_spec)
    assert _cluster_token_problems(cluster_spec, _secret_name()) == {}
    assert cluster_spec == _load(KUBERAY / "raycluster.yaml")["spec"]
    head_image = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == head_image


def test_token_secret_manifest() -> None:
    """The Secret has the key the manifests reference, and no real token is committed."""
    doc = _load(KUBERAY / "token-secret.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "Secret")
    data = doc.get("stringData") or doc.get("data") or {}
    assert TOKEN_KEY in data
    assert data[TOKEN_KEY] == ""  # a placeholder: create the real one with kubectl
