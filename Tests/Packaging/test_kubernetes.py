"""deploy/kubernetes/daemonset.yaml: valid for the Kubernetes versions kubernetes-validate ships schemas of,
and in agreement with the agent (its configuration, drain bound, probes, paths) and the image (its user).
That the ConfigMap's configuration runs in the image and delivers is tested in test_image.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, require_tools, run

MANIFEST = ROOT / "deploy/kubernetes/daemonset.yaml"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def pod(documents) -> dict:
    return documents["DaemonSet"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def agent_toml(documents) -> str:
    return documents["ConfigMap"]["data"]["agent.toml"]


@pytest.mark.parametrize("version", ["1.25", "1.37"])  # the oldest and newest schemas the package ships
def test_the_manifest_validates_strictly(version):
    require_tools("kubernetes-validate")
    result = run("kubernetes-validate", "--strict", "--kubernetes-version", version, MANIFEST)
    assert result.stdout.count("passed") == 4, result.stdout


def test_the_configmap_is_a_valid_agent_configuration(agent_toml, release_binary, tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml)
    checked = run(release_binary, "config", "check", "--config", config)
    assert 'path = "/var/lib/definite-agent/spool.db"' in checked.stdout
    assert "warning" not in (checked.stdout + checked.stderr).lower()


def test_the_pod_matches_the_agent_and_the_image(pod, agent_toml):
    (agent,) = pod["containers"]
    # The image's user (Containerfile USER) is the pod's, and the init container hands it the host paths.
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Containerfile").read_text(), re.M).groups()
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == user
    assert f"chown {user[0]}:{user[1]} " in " ".join(pod["initContainers"][0]["command"])
    # The volumes are where the configuration puts the spool and the sockets.
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for key in ("path", "socket", "http_socket"):
        value = re.search(rf'^{key} = "(.+)"$', agent_toml, re.M).group(1)
        directory = str(Path(value).parent)
        assert host_paths[mounts[directory]] == directory, key
    # The probes reach the metrics listener, which serves /healthz and /readyz.
    port = int(re.search(r'^listen = "0\.0\.0\.0:(\d+)"$', agent_toml, re.M).group(1))
    assert {p["name"]: p["containerPort"] for p in agent["ports"]}["metrics"] == port
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The kubelet's SIGKILL comes after the agent's own bound on a drain (drain_timeout + 5 s).
    drain = int(re.search(r'^drain_timeout = "(\d+)s"$', agent_toml, re.M).group(1))
    assert pod["terminationGracePeriodSeconds"] > drain + 5
    # The key from the Secret, as the variable the agent reads; requests and limits set.
    (key,) = [e for e in agent["env"] if e["name"] == "DEFINITE_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "definite-agent", "key": "api-key"}
    assert set(agent["resources"]) == {"requests", "limits"}
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_image_named_is_the_version_built(pod, version):
    assert pod["containers"][0]["image"] == f"definite-agent:{version}"
