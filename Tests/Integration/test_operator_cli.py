"""What an operator runs: `dlq` with ids that do not exist, `queue peek --limit`, `config check` (every key, the
warnings), through the real binary. Every daemon ends with SIGTERM and must exit 0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, agent_binary, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402


@pytest.fixture
def emu():
    with Emulator(quiet=True) as running:
        yield running


@pytest.fixture
def agent(tmp_path, emu):
    running = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key},
                    extra_config=f'[api]\nurl = "{emu.stream_url}"\n[batch]\nlinger = "50ms"\n').start()
    yield running
    assert running.stop() == 0, running.log()[-3000:]


def test_dlq_replay_and_purge_of_ids_that_do_not_exist_fail_and_touch_nothing(agent, emu):
    emu.control(force={"status": 422, "count": 1})
    with agent.connect() as conn:
        assert conn.request('{"i":1,"ack":"1"}')["ok"]
    wait_until(lambda: agent.status()["dead_letters"] == 1, timeout=30, message="one dead letter")
    (entry,) = json.loads(agent.cli("dlq", "list", "--json").stdout)

    for args in (("dlq", "replay", "--id", "999"), ("dlq", "purge", "--id", "999", "--yes"),
                 ("dlq", "replay", "--id", str(entry["id"]), "999"), ("dlq", "purge", "--id", str(entry["id"]), "999", "--yes")):
        result = agent.cli(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert b"no dead letter with id 999" in result.stderr and b"nothing" in result.stderr, result.stderr
        assert json.loads(agent.cli("dlq", "list", "--json").stdout) == [entry], args
    assert agent.cli("dlq", "show", "999").returncode == 1
    # A mistyped table selects nothing: refused like an unknown id (it read "replayed 0 entries", exit 0).
    for args in (("dlq", "replay", "--table", "bronze.evnets"), ("dlq", "purge", "--table", "bronze.evnets", "--yes")):
        result = agent.cli(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert b"no dead letter for table bronze.evnets" in result.stderr, result.stderr
    assert json.loads(agent.cli("dlq", "list", "--json").stdout) == [entry]

    purged = agent.cli("dlq", "purge", "--id", str(entry["id"]), "--yes")
    assert purged.returncode == 0 and b"purged 1 entries" in purged.stdout, purged.stderr


def test_queue_peek_limit_is_at_least_one_and_is_honoured(agent, emu):
    emu.control(force={"status": 503, "count": 1_000_000})
    with agent.connect() as conn:
        for i in range(5):
            assert conn.request(json.dumps({"i": i, "ack": str(i)}))["ok"]
    zero = agent.cli("queue", "peek", "--limit", "0")
    assert zero.returncode == 64 and b"at least 1" in zero.stderr, zero.stderr
    two = agent.cli("queue", "peek", "--limit", "2", "--json")
    assert two.returncode == 0, two.stderr
    assert [json.loads(line)["record"]["i"] for line in two.stdout.splitlines()] == [0, 1]
    emu.control(force=None)


def test_config_check_shows_the_disk_reserve(tmp_path):
    agent = Agent(tmp_path / "agent", spool_config='disk_reserve = "256MiB"')
    shown = agent.cli("config", "check")
    assert shown.returncode == 0, shown.stderr
    assert 'disk_reserve = "256MiB"' in shown.stdout.decode(), shown.stdout
    auto = Agent(tmp_path / "auto")
    assert 'disk_reserve = "auto"' in auto.cli("config", "check").stdout.decode()


def test_a_tcp_listener_without_a_token_is_warned_about_at_start_and_by_config_check(tmp_path):
    from agent_harness import free_port
    port = free_port()
    agent = Agent(tmp_path / "agent", extra_config=f'http_listen = "127.0.0.1:{port}"')
    check = agent.cli("config", "check")
    assert check.returncode == 0, check.stderr
    assert b"warning: intake.http_listen:" in check.stderr and b"http_token" in check.stderr, check.stderr
    assert b"# warning: intake.http_listen" in check.stdout
    agent.start()
    try:
        assert "every local user can write records" in agent.log(), agent.log()
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
    guarded = Agent(tmp_path / "guarded", extra_config=f'http_listen = "127.0.0.1:{port}"\nhttp_token = "t0ken"')
    assert b"warning" not in guarded.cli("config", "check").stderr


def test_json_output_is_json_also_when_there_is_nothing_to_show(tmp_path):
    """`status --check --json` on a spool not made yet printed its verdict as text, and `queue peek --json`
    printed "nothing pending": a script parsing them failed on exactly the answers it watches for."""
    agent = Agent(tmp_path / "agent")
    result = agent.cli("status", "--check", "--json")
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["healthy"] is False and "never ran" in answer["problems"][0], answer
    agent.start()
    try:
        peek = agent.cli("queue", "peek", "--json")
        assert peek.returncode == 0 and peek.stdout == b"", peek.stdout
        assert agent.cli("queue", "peek").stdout.decode().strip() == "nothing pending"
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_a_command_whose_output_could_not_be_written_exits_74(tmp_path):
    """`status`, `dlq list` and `queue peek` to a full disk exited 0 with nothing written: `status --json >
    f && …` went on. Every command now checks its output at exit (`dlq export` already did)."""
    agent = Agent(tmp_path / "agent").start()
    try:
        for command in (["status"], ["status", "--json"], ["dlq", "list", "--json"], ["queue", "peek"], ["config", "check"]):
            with open("/dev/full", "w") as full:
                result = subprocess.run([agent_binary(), *command, "--config", agent.config_path], stdout=full,
                                        stderr=subprocess.PIPE, timeout=60)
            assert result.returncode == 74, (command, result.returncode, result.stderr.decode())
            assert "the output could not be written: No space left on device" in result.stderr.decode()
        assert agent.cli("status").returncode == 0
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
