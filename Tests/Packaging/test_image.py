"""The OCI image (Containerfile, scripts/build-image): built with podman (or buildah) into a scratch image
store, exported with `podman create` + `podman export`, and run with chroot (Tests/Packaging/in-image),
since containers cannot run here. A run sets the root file system up the way the DaemonSet does: read-only,
with the spool and socket directories as volumes owned by the image's user."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent_harness import free_port, spooled_records, wait_until
from conftest import ROOT, require_root, require_tools, run
from harness import Emulator
import unix_http

IN_IMAGE = ROOT / "Tests/Packaging/in-image"
SPOOL, SOCKETS = "/var/lib/definite-agent", "/run/definite-agent"


@pytest.fixture(scope="module")
def image(release_binary, version, tmp_path_factory):
    """(tag, the podman command with its scratch store): built by scripts/build-image."""
    require_tools("podman")
    store = tmp_path_factory.mktemp("image-store")
    podman = ["podman", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    env = dict(os.environ, PODMAN_FLAGS=" ".join(podman[1:]), IMAGE_CONTEXT=str(store / "context"))
    tag = run(ROOT / "scripts/build-image", cwd=ROOT, env=env).stdout.strip().splitlines()[-1]
    assert tag == f"definite-agent:{version}"
    size = json.loads(run(*podman, "image", "inspect", tag).stdout)[0]["Size"]
    print(f"image {tag}: {size / 1e6:.1f} MB")
    yield tag, podman
    run(*podman, "rmi", "--all", "--force", check=False)
    shutil.rmtree(store, ignore_errors=True)  # a copy of every layer (vfs): not worth keeping


@pytest.fixture(scope="module")
def config(image) -> dict:
    tag, podman = image
    return json.loads(run(*podman, "image", "inspect", tag).stdout)[0]["Config"]


@pytest.fixture(scope="module")
def rootfs(image, tmp_path_factory) -> Iterator[Path]:
    """The image's file system as `podman export` gives it, owners kept as numbers."""
    require_root("extracting an image's file system with its owners")
    tag, podman = image
    directory = tmp_path_factory.mktemp("rootfs")
    container = run(*podman, "create", tag).stdout.strip()
    try:
        exported = subprocess.run([*podman, "export", container], capture_output=True, check=True).stdout
    finally:
        run(*podman, "rm", container, check=False)
    tar = directory / "image.tar"
    tar.write_bytes(exported)
    run("tar", "--numeric-owner", "-C", directory, "-xf", tar)
    tar.unlink()
    directory.chmod(0o755)  # the image's / (pytest makes its directories 0700)
    # The mount points a container runtime provides.
    for mount_point in ("proc", "dev"):
        (directory / mount_point).mkdir(exist_ok=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def in_image(rootfs: Path, *command: str, options: tuple = (), **kwargs) -> subprocess.CompletedProcess:
    require_tools("unshare", "chroot")
    return run(IN_IMAGE, *options, rootfs, *command, **kwargs)


def volume(path: Path) -> Path:
    """A directory like the DaemonSet's hostPath after its init container: 0750, owned by the image's user."""
    path.mkdir()
    os.chown(path, 65532, 65532)
    path.chmod(0o750)
    return path


def test_image_runs_the_agent_as_a_non_root_user_with_the_spool_as_a_volume(config):
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/bin/definite-agent", "run"]
    assert config["Cmd"] == ["--config", "/etc/definite-agent/agent.toml"]
    assert list(config["Volumes"]) == [SPOOL]
    assert list(config["ExposedPorts"]) == ["9464/tcp"]


def test_image_holds_the_binary_its_libraries_and_nothing_else(rootfs, release_binary):
    files = {str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file() or p.is_symlink()}
    libraries = set(re.findall(r"(/\S+) \(0x", run("ldd", release_binary).stdout))
    assert libraries and all(lib.lstrip("/") in files for lib in libraries), (libraries, files)
    assert files - {lib.lstrip("/") for lib in libraries} == {
        "usr/bin/definite-agent", "etc/passwd", "etc/group", "etc/nsswitch.conf",
        "etc/ssl/certs/ca-certificates.crt", "etc/definite-agent/agent.toml",
        "usr/share/doc/definite-agent/copyright"}
    assert (rootfs / "etc/definite-agent/agent.toml").read_text() == (ROOT / "deploy/container/agent.toml").read_text()
    assert "definite-agent:x:65532:65532:" in (rootfs / "etc/passwd").read_text()
    assert ".symtab" not in run("readelf", "--section-headers", "--wide", rootfs / "usr/bin/definite-agent").stdout
    # Only the spool and socket directories belong to the agent's user; the rest is root's.
    for path in rootfs.rglob("*"):
        owned = path.lstat().st_uid, path.lstat().st_gid
        relative = str(path.relative_to(rootfs))
        if relative in ("var/lib/definite-agent", "run/definite-agent"):
            assert owned == (65532, 65532) and path.stat().st_mode & 0o777 == 0o750, relative
        else:
            assert owned == (0, 0), relative


def test_version_and_config_check_in_the_image(rootfs, release_binary):
    assert in_image(rootfs, "/usr/bin/definite-agent", "--version").stdout == run(release_binary, "--version").stdout
    checked = in_image(rootfs, "/usr/bin/definite-agent", "config", "check",
                       "--config", "/etc/definite-agent/agent.toml")
    assert 'listen = "0.0.0.0:9464"' in checked.stdout


def start(rootfs: Path, command: list[str], options: list[str], log: Path, env: dict) -> subprocess.Popen:
    """The agent in the image; the process is the agent itself (in-image execs all the way down)."""
    with open(log, "w") as out:
        return subprocess.Popen([str(IN_IMAGE), *options, str(rootfs), *command], stdout=out, stderr=out,
                                env=dict(os.environ, **env))


def stop(agent: subprocess.Popen, log: Path) -> None:
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=60) == 0, log.read_text()


def test_a_short_run_in_the_image_takes_records_over_its_socket(rootfs, config, tmp_path):
    require_tools("unshare", "chroot", "nsenter", "ip")
    spool, sockets = volume(tmp_path / "spool"), volume(tmp_path / "sockets")
    # As the DaemonSet runs it: read-only root, two volumes, the image's own entrypoint and configuration;
    # in a network of its own, so that nothing reaches the real API (and port 9464 is free).
    volumes = ["--volume", f"{spool}:{SPOOL}", "--volume", f"{sockets}:{SOCKETS}"]
    log = tmp_path / "agent.log"
    agent = start(rootfs, config["Entrypoint"] + config["Cmd"], ["--read-only", "--private-network", *volumes],
                  log, {"DEFINITE_API_KEY": "test-key"})
    try:
        wait_until(lambda: (sockets / "agent.sock").exists() or agent.poll() is not None, timeout=30,
                   message="the agent's socket")
        assert agent.poll() is None, log.read_text()
        # The image's own `send`, as the image's user, through the shared socket directory.
        records = "".join(json.dumps({"id": i, "via": "image"}) + "\n" for i in range(3))
        sent = in_image(rootfs, "/usr/bin/definite-agent", "send", "--table", "bronze.image", options=volumes,
                        input=records)
        assert sent.stdout.strip() == "accepted 3, rejected 0"
        # The probes: on the local Stream API's socket, and on the metrics port the kubelet would use.
        assert unix_http.request(str(sockets / "http.sock"), "GET", "/readyz") == (200, {"status": "ready"})
        for path, answer in (("/healthz", '{"status":"alive"}'), ("/readyz", '{"status":"ready"}')):
            probe = run("nsenter", f"--net=/proc/{agent.pid}/ns/net", "curl", "-s", f"http://127.0.0.1:9464{path}")
            assert probe.stdout.strip() == answer
        status = json.loads(in_image(rootfs, "/usr/bin/definite-agent", "status", "--json", options=volumes).stdout)
        assert status["daemon"]["running"] and status["pending"] == 3
    finally:
        stop(agent, log)
    # The spool is in the volume, private to the agent's user, and holds the records.
    assert (spool / "spool.db").stat().st_uid == 65532 and (spool / "spool.db").stat().st_mode & 0o777 == 0o600
    assert [r["id"] for r in spooled_records(str(spool / "spool.db"))] == [0, 1, 2]


def test_the_daemonsets_configuration_delivers_from_the_image(rootfs, config, tmp_path):
    """The ConfigMap of deploy/kubernetes/daemonset.yaml mounted over /etc/definite-agent, as the DaemonSet
    mounts it; only the API's address (the emulator) and the metrics port (a free one) differ."""
    documents = yaml.safe_load_all((ROOT / "deploy/kubernetes/daemonset.yaml").read_text())
    text = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["agent.toml"]
    port = free_port()
    assert 'listen = "0.0.0.0:9464"' in text
    spool, sockets = volume(tmp_path / "spool"), volume(tmp_path / "sockets")
    settings = tmp_path / "config"
    settings.mkdir()
    volumes = ["--volume", f"{spool}:{SPOOL}", "--volume", f"{sockets}:{SOCKETS}",
               "--volume", f"{settings}:/etc/definite-agent"]
    with Emulator() as emulator:
        (settings / "agent.toml").write_text(
            f'[api]\nurl = "{emulator.stream_url}"\n[batch]\nlinger = "100ms"\n'
            + text.replace('listen = "0.0.0.0:9464"', f'listen = "127.0.0.1:{port}"'))
        log = tmp_path / "agent.log"
        agent = start(rootfs, config["Entrypoint"] + config["Cmd"], ["--read-only", *volumes], log,
                      {"DEFINITE_API_KEY": emulator.api_key})
        try:
            wait_until(lambda: (sockets / "agent.sock").exists() or agent.poll() is not None, timeout=30,
                       message="the agent's socket")
            assert agent.poll() is None, log.read_text()
            records = "".join(json.dumps({"id": i, "via": "daemonset"}) + "\n" for i in range(4))
            sent = in_image(rootfs, "/usr/bin/definite-agent", "send", "--table", "bronze.daemonset",
                            options=volumes, input=records)
            assert sent.stdout.strip() == "accepted 4, rejected 0"
            wait_until(lambda: emulator.scalar("SELECT count(*) FROM lake.bronze.daemonset") == 4, timeout=60,
                       tolerate_errors=True, message="4 rows delivered from the image")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
                assert answer.status == 200
        finally:
            stop(agent, log)
    # The ConfigMap asks for JSON log lines.
    assert all(json.loads(line) for line in log.read_text().splitlines() if line.strip())
