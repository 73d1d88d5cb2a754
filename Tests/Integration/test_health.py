"""What an operator and a probe see: `status` says whether the daemon runs (pid, uptime) and `--check` exits 1
when something needs attention; a full spool shows in the log (one line entering, one leaving), in `status`,
in `definite_agent_intake_refusing{reason}` and as 503 from `GET /readyz`; every counter is there from the
start. Every daemon ends with SIGTERM and must exit 0."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, free_port, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402
from unix_http import request  # noqa: E402


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


@pytest.fixture
def emu():
    with Emulator(quiet=True) as running:
        yield running


def start_agent(tmp_path, emu, *, spool_config: str = "", extra: str = "") -> Agent:
    return Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, spool_config=spool_config,
                 extra_config=extra + f'[api]\nurl = "{emu.stream_url}"\n[batch]\nlinger = "50ms"\n'
                 '[retry]\ninitial = "50ms"\nmax = "200ms"\n').start()


def test_status_says_whether_the_daemon_runs_and_check_is_a_health_probe(tmp_path, emu):
    agent = start_agent(tmp_path, emu)
    try:
        text = agent.cli("status").stdout.decode()
        assert text.startswith(f"daemon: running (pid {agent.process.pid}, up "), text
        daemon = agent.status()["daemon"]
        assert daemon["running"] is True and daemon["pid"] == agent.process.pid and daemon["uptime_s"] >= 0, daemon
        check = agent.cli("status", "--check")
        assert check.returncode == 0 and check.stdout.decode().startswith("ok: daemon running"), check.stdout

        emu.control(force={"status": 503, "count": 1_000_000})  # rows stay pending
        with agent.connect() as conn:
            assert conn.request('{"i":1,"ack":"1"}')["ok"]
        time.sleep(2.5)
        old = agent.cli("status", "--check", "--max-age", "1s")
        assert old.returncode == 1, old.stdout
        assert old.stdout.decode().startswith("unhealthy: the oldest pending row of bronze.events is"), old.stdout
        assert agent.cli("status", "--check", "--max-age", "1h").returncode == 0
        emu.control(force=None)
        wait_until(lambda: agent.status()["pending"] == 0, timeout=30, message="delivered")
        assert agent.cli("status", "--max-age", "1s").returncode == 64  # --max-age goes with --check
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
    down = agent.cli("status", "--check")
    assert down.returncode == 1 and down.stdout.decode().startswith("unhealthy: daemon not running"), down.stdout
    assert agent.status()["daemon"]["running"] is False
    assert agent.cli("status").stdout.decode().startswith("daemon: not running")


def test_a_full_spool_shows_in_the_log_status_metrics_and_readyz(tmp_path, emu):
    metrics, http = free_port(), free_port()
    emu.control(force={"status": 503, "count": 1_000_000})  # nothing drains until the test says so
    agent = start_agent(tmp_path, emu, spool_config='max_bytes = "1MiB"',
                        extra=f'http_listen = "127.0.0.1:{http}"\nhttp_token = "t0ken"\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    try:
        m = samples(requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text)
        for code in ("invalid_json", "invalid_utf8", "too_deep", "invalid_row", "missing_primary_key", "invalid_table",
                     "field_too_large", "too_many_rows", "line_too_long", "invalid_config", "spool_full"):
            assert m[f'definite_agent_intake_rejected_total{{reason="{code}"}}'] == 0, code
        for outcome in ("received", "rejected", "dropped"):
            assert m[f'definite_agent_datagrams_total{{outcome="{outcome}"}}'] == 0
        assert m["definite_agent_records_dead_lettered_total"] == 0 and m["definite_agent_delivery_retries_total"] == 0
        assert m['definite_agent_intake_refusing{reason="max_bytes"}'] == 0 and m['definite_agent_intake_refusing{reason="disk_reserve"}'] == 0
        assert m["definite_agent_spool_max_bytes"] == 1 << 20
        assert any(k.startswith('definite_agent_build_info{version="0.1.0",commit="') and v == 1 for k, v in m.items()), m

        def ready() -> list[int]:
            return [request(agent.http_socket_path, "GET", "/readyz")[0],
                    requests.get(f"http://127.0.0.1:{http}/readyz", timeout=10).status_code,
                    requests.get(f"http://127.0.0.1:{metrics}/readyz", timeout=10).status_code]

        assert ready() == [200, 200, 200]
        assert request(agent.http_socket_path, "GET", "/healthz") == (200, {"status": "alive"})
        assert requests.get(f"http://127.0.0.1:{metrics}/healthz", timeout=10).json() == {"status": "alive"}

        refused = 0
        with agent.connect() as conn:
            for i in range(1500):
                reply = conn.request(json.dumps({"i": i, "pad": "z" * 1000, "ack": str(i)}))
                refused += not reply["ok"]
        assert refused > 100
        wait_until(lambda: ready() == [503, 503, 503], timeout=10, message="readyz says not ready")
        status, body = request(agent.http_socket_path, "GET", "/readyz")
        assert body["status"] == "not ready" and body["reason"].startswith("intake refused: spool full ("), body
        # status reads the daemon's state file, which follows within a quarter of a second.
        wait_until(lambda: "intake refused: spool full (" in agent.cli("status").stdout.decode(), timeout=10,
                   message="status shows the refusal")
        text = agent.cli("status").stdout.decode()
        assert "max_bytes = 1MiB" in text, text
        assert agent.status()["intake_refused"]["reason"] == "max_bytes"
        m = samples(requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text)
        assert m['definite_agent_intake_refusing{reason="max_bytes"}'] == 1
        assert m['definite_agent_intake_rejected_total{reason="spool_full"}'] == refused
        check = agent.cli("status", "--check")
        assert check.returncode == 1 and "intake refused: spool full" in check.stdout.decode(), check.stdout

        emu.control(force=None)  # delivery drains the spool
        wait_until(lambda: ready() == [200, 200, 200], timeout=60, message="ready again once delivery freed space")
        wait_until(lambda: agent.status()["intake_refused"] is None, timeout=10, message="status no longer shows the refusal")
        assert "intake refused" not in agent.cli("status").stdout.decode()
        m = samples(requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text)
        assert m['definite_agent_intake_refusing{reason="max_bytes"}'] == 0
        log = agent.log()
        entering = [line for line in log.splitlines() if "intake refused: the spool is full" in line]
        leaving = [line for line in log.splitlines() if "intake resumed" in line]
        assert len(entering) == 1 and len(leaving) == 1, (entering, leaving)
        assert "reason=max_bytes" in entering[0] and "level=warning" in entering[0], entering
        assert "reason=max_bytes" in leaving[0] and "refused_for=" in leaving[0], leaving
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_a_spool_file_removed_under_the_daemon_shows_in_status_readyz_and_metrics(tmp_path, emu):
    """`rm spool.db*` while the daemon ran: records were refused (500), but `status --check` said "the daemon
    never ran", `status` said the daemon creates the file at its first start, and `/readyz` said ready."""
    metrics = free_port()
    agent = start_agent(tmp_path, emu, extra=f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    try:
        with agent.connect() as conn:
            assert conn.request('{"i":1,"ack":"1"}')["ok"]
            spool = Path(agent.spool_path)
            for path in spool.parent.glob(spool.name + "*"):
                path.unlink()
            reply = conn.request('{"i":2,"ack":"2"}')
            assert not reply["ok"] and reply["code"] == "storage_failed" and "was removed" in reply["error"], reply

        def check():
            return agent.cli("status", "--check")
        wait_until(lambda: "was removed while the daemon runs" in check().stdout.decode(), timeout=10,
                   message="status --check names the removed spool file")
        result = check()
        assert result.returncode == 1 and result.stdout.decode().startswith(f"unhealthy: the spool file {agent.spool_path} was removed"), result.stdout
        plain = agent.cli("status")
        assert plain.returncode == 65 and "was removed while the daemon runs" in plain.stderr.decode(), plain.stderr
        assert "restart the daemon" in plain.stderr.decode(), plain.stderr
        for command in (["queue", "peek"], ["dlq", "list"]):
            other = agent.cli(*command)
            assert other.returncode == 65 and "was removed while the daemon runs" in other.stderr.decode(), (command, other.stderr)
        status, body = request(agent.http_socket_path, "GET", "/readyz")
        assert status == 503 and "was removed while the daemon runs" in body["reason"], body
        m = samples(requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text)
        assert m['definite_agent_intake_refusing{reason="spool_file_gone"}'] == 1
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_a_stopped_daemons_tables_read_queued_not_the_state_it_left(tmp_path, emu):
    """After a stop, `status` showed the state the last daemon recorded ("delivering", "backing off") beside
    "daemon: not running", as if something still moved the rows."""
    emu.control(force={"status": 503, "count": 1_000_000})
    agent = start_agent(tmp_path, emu)
    try:
        with agent.connect() as conn:
            assert conn.request('{"i":1,"ack":"1"}')["ok"]
        wait_until(lambda: agent.status()["tables"][0]["state"] == "backing off", timeout=10, message="backing off")
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
    table = agent.status()["tables"][0]
    assert table["state"] == "queued" and table["state_until"] is None and table["pending"] == 1, table
    text = agent.cli("status").stdout.decode()
    assert "daemon: not running" in text and " queued " in text and "backing off" not in text, text
