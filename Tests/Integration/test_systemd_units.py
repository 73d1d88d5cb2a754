"""The systemd units, their sysusers/tmpfiles entries and `make install`.

- `systemd-analyze verify` accepts the units as installed (with ExecStart= pointing at the staged binary);
- `systemd-analyze security --offline=true` rates the service's exposure at most MAX_EXPOSURE;
- the socket unit, the service, sysusers, tmpfiles and the example configuration agree on names, paths
  and modes;
- `make install DESTDIR=…` puts every file where expected (the binary stripped, the man page, the shell
  completions) and never overwrites a configuration;
- the real daemon runs under the service's own SystemCallFilter=, MemoryDenyWriteExecute= and
  RestrictAddressFamilies= (emulated with libseccomp, refused calls killing the process, so nothing the
  filter would refuse can hide), as an unprivileged user, socket-activated like systemd does it, and
  speaks sd_notify.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent_harness import agent_binary

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd; scripts/install-deps installs it)")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat, unlike in configparser)."""
    entries, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str, section: str | None = None) -> list[str]:
    return [v for s, k, v in unit_entries(path) if k == key and (section is None or s == section)]


def unit_value(path: Path, key: str, section: str | None = None) -> str:
    values = unit_values(path, key, section)
    assert len(values) == 1, f"{path.name}: expected one {key}=, found {values}"
    return values[0]


def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def stand_in_build(base: Path) -> list[str]:
    """What `make build` leaves for `make install`, made in `base` without Swift: an unstripped executable,
    a man page and the three completion scripts. Returns the make variables that point install at them."""
    compiler = shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("needs a C compiler for a stand-in binary")
    base.mkdir(parents=True, exist_ok=True)
    stub = base / "definite-agent.stub"
    subprocess.run([compiler, "-g", "-x", "c", "-", "-o", str(stub)], input=b"int main(void) { return 0; }\n",
                   check=True, capture_output=True)
    share = base / "share"
    (share / "man").mkdir(parents=True)
    (share / "man/definite-agent.1").write_text(".Dd January 1, 2026\n.Dt DEFINITE-AGENT 1\n")
    (share / "completions").mkdir()
    for name in ("definite-agent.bash", "_definite-agent", "definite-agent.fish"):
        (share / "completions" / name).write_text(f"# {name}\n")
    return [f"BIN={stub}", f"SHARE={share}"]


def has_symbols(path: Path) -> bool:
    return ".symtab" in subprocess.run(["readelf", "--section-headers", "--wide", str(path)], capture_output=True,
                                       text=True, check=True).stdout


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """`make install DESTDIR=…` with a stand-in build (the layout does not depend on the build)."""
    base = tmp_path_factory.mktemp("install")
    build = stand_in_build(base)
    assert has_symbols(base / "definite-agent.stub")
    destdir = base / "root"
    result = make("install", f"DESTDIR={destdir}", *build)
    assert result.returncode == 0, result.stdout + result.stderr
    return destdir


UNITDIR = "usr/local/lib/systemd/system"


def verifiable_copy(staged: Path, directory: Path) -> tuple[Path, Path]:
    """The installed units, ExecStart= pointed at the staged binary so that verify can check it."""
    directory.mkdir()
    binary = staged / "usr/local/bin/definite-agent"
    for name in ("definite-agent.service", "definite-agent.socket"):
        text = (staged / UNITDIR / name).read_text()
        text = text.replace("ExecStart=/usr/local/bin/definite-agent", f"ExecStart={binary}")
        if not os.access("/bin/kill", os.X_OK):  # procps (priority important) is on every real host
            text = text.replace("ExecReload=/bin/kill", f"ExecReload={binary}")
        (directory / name).write_text(text)
    return directory / "definite-agent.service", directory / "definite-agent.socket"


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "--no-pager", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# -- systemd-analyze


@needs_analyze
@needs_make
def test_systemd_analyze_verify_accepts_the_installed_units(staged, tmp_path):
    service, sock = verifiable_copy(staged, tmp_path / "units")
    result = analyze("verify", f"./{sock.name}", f"./{service.name}", cwd=service.parent)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "definite-agent" in line]
    assert result.returncode == 0 and not ours, output

    # The check is live: the same units with a missing binary are refused.
    service.write_text(service.read_text().replace(f"ExecStart={staged}", "ExecStart=/nonexistent"))
    broken = analyze("verify", f"./{sock.name}", f"./{service.name}", cwd=service.parent)
    assert broken.returncode != 0 and "/nonexistent" in broken.stdout + broken.stderr


@needs_analyze
@needs_make
def test_service_exposure_is_low(staged, tmp_path):
    service, _ = verifiable_copy(staged, tmp_path / "units")
    result = analyze("security", "--offline=true", f"./{service.name}", cwd=service.parent)
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for definite-agent\.service:\s*([0-9.]+)", output)
    assert match, output
    exposure = float(match.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, output


# -- what the files say, and that they agree


def test_socket_unit_is_group_writable_and_named_for_the_agent():
    sock = UNITS / "definite-agent.socket"
    assert unit_value(sock, "ListenStream", "Socket") == "/run/definite-agent/agent.sock"
    assert unit_value(sock, "SocketMode", "Socket") == "0660"
    assert unit_value(sock, "SocketUser", "Socket") == "definite-agent"
    assert unit_value(sock, "SocketGroup", "Socket") == "definite-agent"
    assert unit_value(sock, "FileDescriptorName", "Socket") == "intake"
    assert unit_value(sock, "WantedBy", "Install") == "sockets.target"
    # The default configuration names the same socket and mode (the `send` command reads it from there).
    example = (ROOT / "etc/definite-agent/agent.toml").read_text()
    assert 'socket = "/run/definite-agent/agent.sock"' in example
    assert 'socket_mode = "0660"' in example


def test_service_unit_runs_the_agent_as_its_own_user_with_the_socket():
    service = UNITS / "definite-agent.service"
    assert unit_value(service, "Type", "Service") == "notify"
    assert unit_value(service, "ExecStart", "Service") == \
        "/usr/local/bin/definite-agent run --config /etc/definite-agent/agent.toml"
    assert unit_value(service, "ExecReload", "Service") == "/bin/kill -HUP $MAINPID"
    assert unit_value(service, "User", "Service") == unit_value(service, "Group", "Service") == "definite-agent"
    assert "definite-agent.socket" in unit_value(service, "Requires", "Unit")
    assert "definite-agent.socket" in " ".join(unit_values(service, "After", "Unit"))
    assert unit_value(service, "LoadCredential", "Service") == "api-key:/etc/definite-agent/api-key"
    assert unit_value(service, "RuntimeDirectoryPreserve", "Service") == "yes"
    # Above the agent's default [service] drain_timeout of 10 s.
    assert unit_value(service, "TimeoutStopSec", "Service") == "30s"
    assert 'drain_timeout = "10s"' in (ROOT / "etc/definite-agent/agent.toml").read_text()
    # The user comes from the sysusers.d entry; tmpfiles makes the socket directory for it.
    sysusers = (UNITS / "sysusers.d/definite-agent.conf").read_text()
    assert re.search(r"^u\s+definite-agent\s+-\s+\".*\"\s+/var/lib/definite-agent\s", sysusers, re.M)
    tmpfiles = (UNITS / "tmpfiles.d/definite-agent.conf").read_text()
    assert re.search(r"^d\s+/run/definite-agent\s+0750\s+definite-agent\s+definite-agent\s", tmpfiles, re.M)
    assert re.search(r"^d\s+/etc/definite-agent\s+0750\s+root\s+definite-agent\s", tmpfiles, re.M)


# -- make install / uninstall


@needs_make
def test_make_install_puts_every_file_in_place(staged):
    expected = {
        "usr/local/bin/definite-agent": 0o755,
        f"{UNITDIR}/definite-agent.service": 0o644,
        f"{UNITDIR}/definite-agent.socket": 0o644,
        "usr/local/lib/sysusers.d/definite-agent.conf": 0o644,
        "usr/local/lib/tmpfiles.d/definite-agent.conf": 0o644,
        "usr/local/share/doc/definite-agent/README.md": 0o644,
        "usr/local/share/doc/definite-agent/OPERATING.md": 0o644,
        "usr/local/share/doc/definite-agent/agent.toml.example": 0o644,
        "usr/local/share/man/man1/definite-agent.1.gz": 0o644,
        "usr/local/share/bash-completion/completions/definite-agent": 0o644,
        "usr/local/share/zsh/site-functions/_definite-agent": 0o644,
        "usr/local/share/fish/vendor_completions.d/definite-agent.fish": 0o644,
        "etc/definite-agent/agent.toml": 0o640,
    }
    for relative, mode in expected.items():
        path = staged / relative
        assert path.is_file(), f"{relative} not installed"
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{relative}: mode {oct(path.stat().st_mode)}"
    assert stat.S_IMODE((staged / "etc/definite-agent").stat().st_mode) == 0o750
    assert (staged / "etc/definite-agent/agent.toml").read_text() == \
        (ROOT / "etc/definite-agent/agent.toml").read_text()
    # Nothing outside the install locations (the spool and key are never made by install).
    assert not (staged / "var").exists() and not (staged / "etc/definite-agent/api-key").exists()
    # The installed binary is stripped; the man page compressed (what man and Debian expect).
    assert not has_symbols(staged / "usr/local/bin/definite-agent")
    assert gzip.decompress((staged / "usr/local/share/man/man1/definite-agent.1.gz").read_bytes()).startswith(b".Dd")
    # Installed as shipped, with the default PREFIX.
    assert (staged / UNITDIR / "definite-agent.service").read_text() == \
        (UNITS / "definite-agent.service").read_text()


@needs_make
def test_make_install_never_overwrites_a_configuration_and_follows_prefix(tmp_path):
    build = stand_in_build(tmp_path)
    destdir = tmp_path / "root"
    config = destdir / "etc/definite-agent/agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    result = make("install", f"DESTDIR={destdir}", *build, "PREFIX=/opt/da")
    assert result.returncode == 0, result.stdout + result.stderr
    assert config.read_text() == "# mine\n"
    assert "kept the existing" in result.stdout
    assert "staged under" in result.stdout and "systemctl enable --now" in result.stdout
    service = (destdir / "opt/da/lib/systemd/system/definite-agent.service").read_text()
    assert "ExecStart=/opt/da/bin/definite-agent run --config /etc/definite-agent/agent.toml" in service
    assert (destdir / "opt/da/bin/definite-agent").is_file()

    # uninstall removes the binary and the units, and keeps the configuration.
    result = make("uninstall", f"DESTDIR={destdir}", "PREFIX=/opt/da")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (destdir / "opt/da/bin/definite-agent").exists()
    assert not (destdir / "opt/da/lib/systemd/system/definite-agent.service").exists()
    assert not (destdir / "opt/da/share/man/man1/definite-agent.1.gz").exists()
    assert not (destdir / "opt/da/share/bash-completion/completions/definite-agent").exists()
    assert config.read_text() == "# mine\n"
    assert "Kept, on purpose" in result.stdout


@needs_make
def test_make_install_without_a_binary_says_to_build(tmp_path):
    result = make("install", f"DESTDIR={tmp_path}", f"BIN={tmp_path}/missing")
    assert result.returncode != 0 and "make build" in result.stderr
    assert not any(tmp_path.iterdir())


@needs_make
def test_make_install_without_the_man_page_says_to_build(tmp_path):
    build = stand_in_build(tmp_path / "build")
    (tmp_path / "build/share/man/definite-agent.1").unlink()
    result = make("install", f"DESTDIR={tmp_path}/root", *build)
    assert result.returncode != 0 and "make build" in result.stderr
    assert not (tmp_path / "root").exists()


# -- the daemon under the service's sandbox


class SeccompFilter:
    """The service's SystemCallFilter=, MemoryDenyWriteExecute=yes and RestrictAddressFamilies=, built
    with libseccomp. A refused call kills the process (the unit says EPERM; killing makes it visible)."""

    ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
    CMP_EQ, CMP_MASKED_EQ = 4, 7
    FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    def __init__(self, service: Path):
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.groups: dict[str, set[str]] = {}
        allowed = self.expand("@default")  # systemd adds it to every allow list
        for spec in unit_values(service, "SystemCallFilter", "Service"):
            deny = spec.startswith("~")
            names = set().union(*(self.expand(n) for n in spec.lstrip("~").split()))
            allowed = allowed - names if deny else allowed | names
        families = [self.FAMILIES[f] for f in unit_value(service, "RestrictAddressFamilies", "Service").split()]
        assert unit_value(service, "MemoryDenyWriteExecute", "Service") == "yes"
        self.ctx = ctypes.c_void_p(self.lib.seccomp_init(ctypes.c_uint32(self.KILL_PROCESS)))
        special = {"mmap", "mprotect", "pkey_mprotect", "shmat", "socket"}
        for name in sorted(allowed - special):
            number = self.lib.seccomp_syscall_resolve_name(name.encode())
            if number >= 0:
                assert self.lib.seccomp_rule_add(self.ctx, ctypes.c_uint32(self.ALLOW), number, 0) == 0, name
        # MemoryDenyWriteExecute=yes: no mapping both writable and executable, no mprotect to executable.
        self.allow_masked("mmap", 2, 0x6, [0x0, 0x2, 0x4])
        self.allow_masked("mprotect", 2, 0x4, [0x0])
        self.allow_masked("pkey_mprotect", 2, 0x4, [0x0])
        # RestrictAddressFamilies=: other families get EAFNOSUPPORT, as systemd does.
        number = self.lib.seccomp_syscall_resolve_name(b"socket")
        for family in range(46):
            action = self.ALLOW if family in families else 0x00050000 | 97
            rule = (self.Cmp * 1)(self.Cmp(0, self.CMP_EQ, family, 0))
            assert self.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(action), number, 1, rule) == 0

    def expand(self, name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        if name not in self.groups:
            out = subprocess.run([ANALYZE, "syscall-filter", "--no-pager", name], capture_output=True, text=True,
                                 check=True).stdout
            calls: set[str] = set()
            for line in out.splitlines()[1:]:
                item = line.strip()
                if item and not item.startswith("#"):
                    calls |= self.expand(item)
            self.groups[name] = calls
        return self.groups[name]

    def allow_masked(self, name: str, arg: int, mask: int, values: list[int]) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        for value in values:
            rule = (self.Cmp * 1)(self.Cmp(arg, self.CMP_MASKED_EQ, mask, value))
            assert self.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(self.ALLOW), number, 1, rule) == 0

    def load(self) -> None:
        """In the child, after dropping privileges: from here on the filter applies (and no_new_privs)."""
        if self.lib.seccomp_load(self.ctx) != 0:
            os._exit(120)


@needs_analyze
def test_agent_runs_under_the_service_sandbox_socket_activated(tmp_path):
    try:
        binary = agent_binary()
    except RuntimeError as error:
        pytest.skip(str(error))
    activate = shutil.which("systemd-socket-activate")
    if activate is None or ctypes.util.find_library("seccomp") is None:
        pytest.skip("needs systemd-socket-activate and libseccomp (Debian package systemd)")
    seccomp = SeccompFilter(UNITS / "definite-agent.service")

    # As an unprivileged user, like the service (root would also make SQLite chown its journal files).
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    work = Path(tempfile.mkdtemp(prefix="definite-agent-sandbox-"))
    try:
        os.chmod(work, 0o755)
        if os.geteuid() == 0:
            os.chown(work, user.pw_uid, user.pw_gid)
        probe = subprocess.run([binary, "--version"], capture_output=True, user=user.pw_uid, group=user.pw_gid,
                               extra_groups=[]) if os.geteuid() == 0 else None
        if probe is not None and probe.returncode != 0:
            pytest.skip(f"user {user.pw_name} cannot run {binary}: {probe.stderr.decode(errors='replace')}")

        sock_path, config = work / "agent.sock", work / "agent.toml"
        config.write_text(f"""
[api]
url = "http://localhost:9/v2/stream"
[spool]
path = "{work}/spool.db"
[intake]
socket = "{sock_path}"
http_socket = "{work}/http.sock"
default_table = "bronze.events"
[batch]
linger = "50ms"
""")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify.sock"))
        os.chmod(work / "notify.sock", 0o777)
        notify.settimeout(0.2)

        def sandbox() -> None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            seccomp.load()

        env = {"PATH": "/usr/bin:/bin", "DEFINITE_API_KEY": "test-key",
               "NOTIFY_SOCKET": str(work / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        log = open(work / "agent.log", "wb")
        # systemd-socket-activate holds the listening socket and, at the first connection, execs the agent
        # with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, as PID 1 does for definite-agent.socket.
        process = subprocess.Popen([activate, "--listen", str(sock_path), "--fdname=intake",
                                    *(f"--setenv={name}" for name in env), binary, "run", "--config", str(config)],
                                   env=env, stdout=log, stderr=log, preexec_fn=sandbox, cwd=work)
        messages: list[str] = []

        def collect(until: str, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(until in m for m in messages):
                    return True
                try:
                    messages.append(notify.recv(4096).decode())
                except socket.timeout:
                    pass
            return any(until in m for m in messages)

        try:
            deadline = time.monotonic() + 10
            while not sock_path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            agent_log = lambda: (work / "agent.log").read_text(errors="replace")  # noqa: E731
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(20)
                client.connect(str(sock_path))  # the first connection starts the agent
                try:
                    client.sendall(b'{"n":1,"ack":"a1"}\n')
                    reply = client.makefile("rb").readline()
                except OSError as error:  # the agent died with the connection open
                    reply = repr(error).encode()
            if b'"ok":true' not in reply:
                try:
                    process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            assert b'"ok":true' in reply, \
                f"reply {reply!r}, agent exit {process.poll()} (-31 is SIGSYS: a refused system call)\n{agent_log()}"
            assert collect("READY=1", 5), (messages, agent_log())
            assert collect("WATCHDOG=1", 3), (messages, agent_log())
            process.send_signal(signal.SIGHUP)
            process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)  # a delivery attempt: name resolution and a refused connection, via libcurl
            assert process.poll() is None, (process.returncode, agent_log())
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=20)
            assert code == 0, f"exit {code} (-31 is SIGSYS: a refused system call)\n{agent_log()}"
            assert collect("STOPPING=1", 1), messages
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            notify.close()
            log.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
