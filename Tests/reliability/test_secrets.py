"""Secrets: the API key never leaves the Authorization header.

For each key source (`[api] key_file`, `$DEFINITE_API_KEY`, `$CREDENTIALS_DIRECTORY/api-key`) the daemon
runs through 401s (an emulator that accepts another key), SIGHUP onto an emulator that accepts the key, 5xx
retries, poison rows dead-lettered by 400s, every CLI command that prints state (`status`, `status --json`,
`config check`, `dlq list/show/export`, `queue peek`), the metrics endpoint, kill -9, and SIGABRT / SIGSEGV
sent to the daemon (the Swift runtime's crash handler prints a backtrace). Every output, the log and every
byte of the spool files (`spool.db`, `-wal`, `-shm`) are searched for the key, in raw, base64 (three
alignments) and hex forms. A key file open to others, or to a group the agent does not run as, gives a warning
at start and from `config check`.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from agent_harness import Agent, free_port, agent_config
from harness import Emulator
from reliability_common import wait_until

KEY = "sk-live-0123456789abcdefSECRET"
TABLE = "bronze.secret_events"


def secret_forms() -> dict[str, bytes]:
    raw = KEY.encode()
    forms = {"raw": raw, "core": b"0123456789abcdefSECRET", "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"x" * shift + raw)
        forms[f"base64+{shift}"] = encoded[4:-4]  # the part that does not depend on neighbouring bytes
        forms[f"base64url+{shift}"] = base64.urlsafe_b64encode(b"x" * shift + raw)[4:-4]
    return forms


FORMS = secret_forms()


def leaks(data: bytes) -> list[str]:
    return [name for name, form in FORMS.items() if form in data]


class Evidence:
    """Everything the agent printed or stored, by where it came from."""

    def __init__(self):
        self.items: list[tuple[str, bytes]] = []

    def add(self, where: str, data: bytes | str):
        self.items.append((where, data.encode() if isinstance(data, str) else data))

    def cli(self, agent: Agent, *args: str, expect_ok: bool = True):
        result = agent.cli(*args)
        self.add(f"`{' '.join(args)}` stdout", result.stdout)
        self.add(f"`{' '.join(args)}` stderr", result.stderr)
        if expect_ok:
            assert result.returncode == 0, (args, result.stderr.decode())
        return result

    def spool(self, agent: Agent, when: str):
        for suffix in ("", "-wal", "-shm"):
            path = Path(agent.spool_path + suffix)
            if path.exists():
                self.add(f"{path.name} ({when})", path.read_bytes())

    def check(self):
        found = [(where, leaks(data)) for where, data in self.items if leaks(data)]
        assert not found, f"the API key appears in: {found}"
        return len(self.items), sum(len(d) for _, d in self.items)


@pytest.mark.parametrize("source", ["key_file", "env", "credentials"])
def test_the_api_key_never_appears_in_outputs_logs_or_the_spool(tmp_path, source):
    wrong = Emulator(api_keys=("another-key",), quiet=True)
    right = Emulator(api_keys=(KEY,), quiet=True)
    port = free_port()
    env: dict[str, str] = {}
    api: dict = {}
    if source == "key_file":
        key_file = tmp_path / "api-key"
        key_file.write_text(KEY + "\n")
        key_file.chmod(0o600)
        api["key_file"] = str(key_file)
    elif source == "env":
        env["DEFINITE_API_KEY"] = KEY
    else:
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "api-key").write_text(KEY + "\n")
        (credentials / "api-key").chmod(0o400)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    agent = Agent(tmp_path / "agent", default_table=TABLE, env=env,
                  extra_config=agent_config(wrong.stream_url, api=api, metrics={"listen": f"127.0.0.1:{port}"}))
    if source != "env":
        agent.env.pop("DEFINITE_API_KEY", None)
    if source != "credentials":
        agent.env.pop("CREDENTIALS_DIRECTORY", None)
    evidence = Evidence()
    try:
        agent.start()

        def send(rows, ack):
            with agent.connect() as conn:
                reply = conn.request(json.dumps({"data": rows, "config": {"table": TABLE}, "ack": ack}))
                evidence.add(f"intake reply {ack}", json.dumps(reply))
                assert reply["ok"], reply

        # 1. The API refuses the key: 401, "auth failing".
        send([{"i": i} for i in range(50)], "a")
        wait_until(lambda: agent.status()["tables"][0]["state"] == "auth failing", 15, message="auth failing")
        assert all(r["status"] == 401 for r in wrong.requests())
        for args in (("status",), ("status", "--json"), ("config", "check"), ("queue", "peek"),
                     ("queue", "peek", "--json"), ("dlq", "list"), ("dlq", "list", "--json")):
            evidence.cli(agent, *args)
        evidence.add("metrics (401)", requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content)
        evidence.spool(agent, "401")

        # 2. SIGHUP onto the emulator that takes the key: 5xx retries, then poison rows dead-lettered by 400s
        #    (not both at once: see test_split_under_faults.py).
        right.control(force={"status": 503, "count": 2}, retry_after=0)
        config = Path(agent.config_path).read_text().replace(wrong.stream_url, right.stream_url)
        Path(agent.config_path).write_text(config)
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: agent.status()["pending"] == 0, 30, message="delivered after SIGHUP")
        right.control(error_rate=0.0, reject_marker="poison", reject_marker_mode="request")
        send([{"i": 100 + i, **({"poison": True} if i in (3, 17) else {})} for i in range(40)], "b")
        wait_until(lambda: agent.status()["pending"] == 0, 30, message="poison rows dead-lettered")
        assert agent.status()["dead_letters"] == 2
        assert right.scalar(f"SELECT count(*) FROM lake.{TABLE}") == 88
        statuses = {r["status"] for r in right.requests()}
        assert {200, 400} <= statuses and statuses & {500, 503}, statuses
        entries = json.loads(evidence.cli(agent, "dlq", "list", "--json").stdout)
        for args in (("status",), ("status", "--json"), ("config", "check"), ("dlq", "list"),
                     ("dlq", "show", str(entries[0]["id"])), ("dlq", "export"), ("queue", "peek", "--json")):
            evidence.cli(agent, *args)
        evidence.add("metrics (after delivery)", requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content)
        evidence.spool(agent, "running")

        # 3. Crashes: kill -9, then SIGABRT and SIGSEGV (the crash handler writes a line; a debug build's runtime
        #    adds a backtrace).
        right.control(error_rate=1.0, reject_marker=None)
        send([{"i": 1000 + i} for i in range(10)], "c")
        agent.kill9()
        evidence.spool(agent, "after kill -9")
        crashes = []
        for sig in (signal.SIGABRT, signal.SIGSEGV):
            agent.start()
            send([{"i": 2000 + sig + i} for i in range(5)], f"s{sig}")
            time.sleep(0.3)
            # SIGABRT (systemd's watchdog signal): the Swift runtime's backtracer prints a crash report, then
            # the daemon ends (see test_crash_loop.py::test_an_external_crash_signal_ends_the_daemon); SIGSEGV
            # sent from outside ends it at once, without a report.
            sent = 0
            code = None
            while code is None and sent < 3:
                agent.process.send_signal(sig)
                sent += 1
                try:
                    code = agent.process.wait(timeout=3 if sent == 1 else 15)
                except subprocess.TimeoutExpired:
                    pass
            assert code is not None and sent == 1, f"the daemon survived {sent} {signal.Signals(sig).name}"
            crashes.append((signal.Signals(sig).name, code, sent))
            evidence.spool(agent, f"after {signal.Signals(sig).name}")
        assert all(code != 0 for _, code, _ in crashes), crashes
        # The crash handler's line (the release binary has no backtracer; a debug build adds the runtime's report).
        assert "definite-agent: ended by SIGABRT from process" in agent.log(), "no crash report in the log"
        agent.start()
        right.control(error_rate=0.0)
        wait_until(lambda: agent.status()["pending"] == 0, 30, message="final delivery")
        evidence.cli(agent, "status", "--json")
        assert agent.stop() == 0
        evidence.spool(agent, "after a clean stop")

        log = agent.log()
        evidence.add("agent log", log)
        assert "API key loaded" in log or "api key" in log.lower()
        # The log says where the key came from.
        expected_source = {"key_file": str(tmp_path / "api-key"), "env": "$DEFINITE_API_KEY",
                           "credentials": str(tmp_path / "credentials" / "api-key")}[source]
        assert expected_source in log, f"the log does not name the key's source {expected_source}"
        assert "is open to" not in log
        pieces, size = evidence.check()
        print(f"{source}: searched {pieces} outputs, {size} bytes (log {len(log)} bytes) for {len(FORMS)} forms "
              f"of the key; crashes {crashes}; no match")
    finally:
        agent.finish()
        wrong.stop()
        right.stop()


def start_with_key_file(tmp_path, mode: int, group: int | None = None) -> tuple[Agent, Path]:
    """Starts the daemon on a key file with `mode` (and `group`), waits until it logged the key as loaded,
    stops it."""
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(mode)
    if group is not None:
        os.chown(key_file, -1, group)
    agent = Agent(tmp_path / "agent", extra_config=f'[api]\nkey_file = "{key_file}"\n')
    agent.env.pop("DEFINITE_API_KEY", None)
    agent.start()
    try:
        wait_until(lambda: "API key" in agent.log(), 10, message="the key logged as loaded")
    finally:
        agent.finish()
    return agent, key_file


@pytest.mark.parametrize("mode,group,exposure", [(0o644, None, "open to others"), (0o604, None, "open to others"),
                                                 (0o640, os.getegid() + 4242, "open to group")])
def test_a_key_file_open_to_others_or_another_group_is_warned_about(tmp_path, mode, group, exposure):
    agent, key_file = start_with_key_file(tmp_path, mode, group)
    log = agent.log()
    warnings = [line for line in log.splitlines() if f"is {exposure}" in line]
    assert len(warnings) == 1, log
    assert "warning" in warnings[0] and str(key_file) in warnings[0] and "chmod 600" in warnings[0], warnings
    assert not leaks(log.encode()), "the key is in the log"
    check = agent.cli("config", "check")
    assert not leaks(check.stdout + check.stderr)
    # The operator's command does not know the agent's groups: it flags others only.
    assert (b"open to others" in check.stderr) == (exposure == "open to others"), check.stderr


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_private_key_file_or_one_shared_with_the_agents_group_gives_no_warning(tmp_path, mode):
    """0640 root:definite-agent is what OPERATING.md recommends for rotating the key by reload; the daemon
    warned "chmod 600 it" at every start, which would have locked its own user out."""
    agent, _ = start_with_key_file(tmp_path, mode)
    assert "is open to" not in agent.log()
