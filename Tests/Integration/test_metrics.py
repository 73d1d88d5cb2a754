"""The opt-in Prometheus endpoint: its counters match what a test sent and what the emulator received."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, free_port, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402


def parse(text: str) -> dict[str, float]:
    """{'name{labels}': value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_match_what_was_sent_and_what_the_emulator_received(tmp_path):
    port = free_port()
    with Emulator() as emu:
        emu.control(error_rate=0.3)
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
[api]
url = "{emu.stream_url}"
[batch]
linger = "50ms"
max_rows = 50
[retry]
initial = "20ms"
max = "100ms"
[metrics]
listen = "127.0.0.1:{port}"
""").start()
        try:
            with agent.connect() as conn:
                for i in range(3):
                    assert conn.request(json.dumps({"config": {"table": "bronze.m"}, "data": [{"i": 100 * i + k} for k in range(100)], "ack": str(i)}))["ok"]
                assert conn.request('{"ack":"bad1", broken')["code"] == "invalid_json"
                assert conn.request('{"ack":"bad2","config":{"table":"bronze.m","mode":"merge"},"data":{"i":1}}')["code"] == "invalid_config"
                conn.send(b"not json")
                assert conn.reply()["code"] == "invalid_json"
            wait_until(lambda: agent.status()["pending"] == 0)
            emu.control(error_rate=0)
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            m = parse(text)
            stats = emu.stats()
            assert m["definite_agent_records_spooled_total"] == 300
            assert m['definite_agent_intake_rejected_total{reason="invalid_json"}'] == 2
            assert m['definite_agent_intake_rejected_total{reason="invalid_config"}'] == 1
            assert m["definite_agent_intake_lines_total"] == 6
            assert m["definite_agent_records_delivered_total"] == 300 == emu.scalar("SELECT count(*) FROM lake.bronze.m")
            by_status = {k: v for k, v in stats["by_status"].items()}
            for status, count in by_status.items():
                assert m[f'definite_agent_http_requests_total{{status="{status}"}}'] == count, (status, text)
            assert m["definite_agent_delivery_retries_total"] == sum(v for k, v in by_status.items() if k != "200")
            assert m['definite_agent_pending_rows{table="bronze.m"}'] == 0
            assert m['definite_agent_dead_letters{table="bronze.m"}'] == 0
            assert m['definite_agent_request_bytes_total{stage="sent"}'] < m['definite_agent_request_bytes_total{stage="uncompressed"}']
            assert m["definite_agent_ack_latency_seconds_count"] >= 1
            assert m["definite_agent_delivery_latency_seconds_count"] == sum(by_status.values())
            assert requests.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404
        finally:
            agent.finish()


def test_metrics_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "metrics.sock")
    agent = Agent(tmp_path / "agent", extra_config=f'[metrics]\nlisten = "{path}"').start()
    try:
        with agent.connect() as conn:
            assert conn.request('{"a":1,"ack":"1"}')["ok"]
        out = subprocess.run(["curl", "-sf", "--unix-socket", path, "http://localhost/metrics"], capture_output=True, timeout=10)
        assert out.returncode == 0
        m = parse(out.stdout.decode())
        assert m["definite_agent_records_spooled_total"] == 1
        assert m['definite_agent_pending_rows{table="bronze.events"}'] == 1
        assert m["definite_agent_spool_bytes"] > 0
    finally:
        agent.finish()


def test_every_counter_and_histogram_is_there_at_zero_before_the_first_event(tmp_path):
    """`rate()` and `absent()` alerts need a series before its first event: http_requests_total and both
    latency histograms appeared only once something happened."""
    path = str(tmp_path / "metrics.sock")
    agent = Agent(tmp_path / "agent", extra_config=f'[metrics]\nlisten = "{path}"').start()
    try:
        out = subprocess.run(["curl", "-sf", "--unix-socket", path, "http://localhost/metrics"], capture_output=True, timeout=10)
        m = parse(out.stdout.decode())
        for status in ("200", "400", "401", "404", "413", "422", "429", "500", "503", "transport_error"):
            assert m[f'definite_agent_http_requests_total{{status="{status}"}}'] == 0, status
        for histogram in ("definite_agent_ack_latency_seconds", "definite_agent_delivery_latency_seconds"):
            assert m[f"{histogram}_count"] == 0 and m[f"{histogram}_sum"] == 0, histogram
        assert m["definite_agent_intake_lines_total"] == 0 and m["definite_agent_records_delivered_total"] == 0
    finally:
        agent.finish()
