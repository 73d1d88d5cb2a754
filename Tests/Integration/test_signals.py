"""Operator signals on the real daemon: SIGHUP reloads the API key, SIGUSR1 delivers now."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402


def send(agent, rows, table="bronze.sig"):
    with agent.connect() as conn:
        reply = conn.request(json.dumps({"config": {"table": table}, "data": rows, "ack": "a"}))
        assert reply["ok"], reply


def count(emu, table="sig"):
    try:
        return emu.scalar(f"SELECT count(*) FROM lake.bronze.{table}")
    except Exception:
        return 0


def key_file_agent(tmp_path, emu, key: str, retry: tuple[str, str] = ("50ms", "200ms")) -> tuple[Agent, Path]:
    """A daemon delivering to `emu` with its key in a file (holding `key`), linger 50 ms, the retry bounds
    given; and the key file."""
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    agent = Agent(tmp_path / "agent", extra_config=f"""
[api]
url = "{emu.stream_url}"
key_file = "{key_file}"
[batch]
linger = "50ms"
[retry]
initial = "{retry[0]}"
max = "{retry[1]}"
""").start()
    return agent, key_file


def test_sighup_puts_a_new_api_key_in_use_without_losing_a_record(tmp_path):
    with Emulator(api_keys=("new-key",)) as emu:
        agent, key_file = key_file_agent(tmp_path, emu, "old-key")
        try:
            send(agent, [{"i": i} for i in range(100)])
            wait_until(lambda: agent.status()["tables"][0]["state"] == "auth failing", 15, message="the refused key is shown")
            assert count(emu) == 0
            key_file.write_text("new-key\n")
            agent.process.send_signal(signal.SIGHUP)
            wait_until(lambda: agent.status()["pending"] == 0, 15, message="delivered with the new key")
            assert count(emu) == 100
            assert agent.process.poll() is None
            log = agent.log()
            assert "API key reloaded" in log
            assert "new-key" not in log and "old-key" not in log
        finally:
            agent.finish()


def test_sighup_with_an_unreadable_key_file_keeps_the_key_in_use(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("the-key\n")
    key_file.chmod(0o600)
    with Emulator(api_keys=("the-key",)) as emu:
        agent = Agent(tmp_path / "agent", extra_config=f"""
[api]
url = "{emu.stream_url}"
key_file = "{key_file}"
[batch]
linger = "50ms"
""").start()
        try:
            key_file.unlink()
            agent.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "the old configuration and key keep running" in agent.log(), 10, message="the failed reload is logged")
            # Rejected whole: nothing of the file applied (a restart would refuse it too).
            assert "configuration reloaded" not in agent.log()
            send(agent, [{"i": 1}])
            wait_until(lambda: count(emu) == 1, 15, message="still delivering with the old key")
        finally:
            agent.finish()


def test_a_reload_stuck_reading_does_not_hold_the_stop(tmp_path):
    """A SIGHUP whose reload blocks (a key or configuration on a hung mount; here a test hook makes it wait
    60 s): the handling was awaited inside the operator-signals part, which then could not stop, so every
    listener went on accepting and the process was killed by the stop's last resort 21 s later. The stop no
    longer waits for it; a SIGUSR1 behind it waits its turn."""
    agent = Agent(tmp_path / "agent", env={"DEFINITE_AGENT_TEST_RELOAD_DELAY_MS": "60000"},
                  extra_config='[service]\ndrain_timeout = "2s"\n').start()
    agent.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    agent.process.send_signal(signal.SIGUSR1)
    send(agent, [{"i": 1}])
    agent.stop_and_assert_clean(within=5)
    assert "SIGUSR1" not in agent.log(), "the SIGUSR1 was handled before the SIGHUP it came after"


def test_sigusr1_delivers_now_ignoring_linger(tmp_path):
    with Emulator() as emu:
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
[api]
url = "{emu.stream_url}"
[batch]
linger = "1h"
""").start()
        try:
            send(agent, [{"i": i} for i in range(10)])
            time.sleep(1.0)
            assert count(emu) == 0, "linger 1h: nothing goes yet"
            agent.process.send_signal(signal.SIGUSR1)
            wait_until(lambda: count(emu) == 10, 10, message="SIGUSR1 flushes")
            assert agent.status()["pending"] == 0
        finally:
            agent.finish()


def test_sighup_reloads_the_configuration_live_and_rejects_an_invalid_one(tmp_path):
    with Emulator() as emu:
        base = f"""
[api]
url = "{emu.stream_url}"
[batch]
linger = "1h"
"""
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=base).start()
        try:
            config = Path(agent.config_path).read_text()
            # An invalid file: rejected, the old configuration keeps running.
            Path(agent.config_path).write_text(config.replace('linger = "1h"', 'linger = "soon"'))
            agent.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "cannot use the configuration file" in agent.log(), 10, message="the invalid file is reported")
            assert "batch.linger" in agent.log()
            send(agent, [{"i": 1}])
            time.sleep(1.0)
            assert count(emu) == 0 and agent.process.poll() is None
            # A valid file: the new linger applies live; a socket change waits for a restart.
            Path(agent.config_path).write_text(
                config.replace('linger = "1h"', 'linger = "50ms"').replace("agent.sock", "moved.sock"))
            agent.process.send_signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in agent.log(), 10, message="the reload is logged")
            assert "intake.socket" in agent.log() and "only after a restart" in agent.log()
            send(agent, [{"i": 2}])
            wait_until(lambda: count(emu) == 2, 10, message="delivered under the new linger")
            with agent.connect() as conn:  # still on the old socket
                assert conn.request('{"config":{"table":"bronze.sig"},"data":{"i":3},"ack":"z"}')["ok"]
        finally:
            agent.finish()


def test_sighup_leaves_a_backoff_and_retry_after_alone_unless_the_key_or_api_changed(tmp_path):
    """Every SIGHUP sent everything pending at once, as SIGUSR1 does: a configuration manager reloading
    every few seconds hammered an API that asked, with 429 and Retry-After, for a pause. A reload that
    changes neither the key nor [api] now leaves the backoff alone; a new key ends it (delivery was waiting
    on the refused one)."""
    with Emulator(api_keys=("the-key", "new-key")) as emu:
        emu.control(force={"status": 429, "count": 1_000_000}, retry_after=30)
        agent, key_file = key_file_agent(tmp_path, emu, "the-key", retry=("30s", "60s"))
        try:
            send(agent, [{"i": i} for i in range(5)])
            wait_until(lambda: len(emu.requests()) == 1, 15, message="the first request, answered 429")
            for _ in range(10):
                agent.process.send_signal(signal.SIGHUP)
                time.sleep(0.1)
            wait_until(lambda: agent.log().count("configuration reloaded") == 10, 10, message="ten reloads")
            time.sleep(1.0)
            assert len(emu.requests()) == 1, "a reload that changed nothing cut the API's Retry-After short"
            emu.control(force=None)
            key_file.write_text("new-key\n")
            agent.process.send_signal(signal.SIGHUP)
            wait_until(lambda: count(emu) == 5, 10, message="a new key: delivery goes at once")
        finally:
            agent.finish()
