"""Fluent Bit as a real client of the local Stream API: its `out_http` posts NDJSON (`format json_lines`) or a
bare JSON array (`format json`), gzipped, with the table in the query string. Every record it generates must
land in the agent's spool, once. Skipped, with the reason, when the Fluent Bit binary cannot run here."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent_harness import Agent, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
FLUENT_BIT = Path(os.environ.get("FLUENT_BIT_BIN", ROOT.parent / "shared" / "peers" / "fluent-bit-5.1.1" / "fluent-bit"))
RECORDS = 600


def fluent_bit_problem() -> str | None:
    """Why the Fluent Bit binary cannot run here, or None."""
    if not FLUENT_BIT.exists():
        return f"{FLUENT_BIT} does not exist (set FLUENT_BIT_BIN to a Fluent Bit 5.x binary)"
    try:
        probe = subprocess.run([str(FLUENT_BIT), "--version"], capture_output=True, timeout=30)
    except OSError as error:
        return f"{FLUENT_BIT} cannot be executed: {error}"
    if probe.returncode != 0:
        return (f"{FLUENT_BIT} --version exited {probe.returncode}: {probe.stderr.decode(errors='replace').strip()[:300]}"
                " (it needs libyaml-0-2, libssl3 and libsqlite3-0: scripts/install-deps)")
    return None


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    problem = fluent_bit_problem()
    if problem:
        pytest.skip(problem)
    port = free_port()
    running = Agent(tmp_path_factory.mktemp("fluent-bit") / "agent", extra_config=f'http_listen = "127.0.0.1:{port}"').start()
    running.http_port = port
    yield running
    assert running.stop() == 0, running.log()[-3000:]


@pytest.mark.parametrize("fmt", ["json_lines", "json"])
def test_fluent_bit_out_http_lands_every_record(agent, tmp_path, fmt):
    table = f"bronze.fluent_{fmt}"
    config = tmp_path / "fluent-bit.yaml"
    config.write_text(f"""
service:
  flush: 1
  log_level: warn
pipeline:
  inputs:
    - name: dummy
      dummy: '{{"source": "fluent-bit", "format": "{fmt}", "nested": {{"a": [1, 2, 3]}}}}'
      samples: {RECORDS}
      rate: 2000
  outputs:
    - name: http
      match: '*'
      host: 127.0.0.1
      port: {agent.http_port}
      uri: /v2/stream?table={table}
      format: {fmt}
      json_date_key: false
      compress: gzip
      retry_limit: false
""")
    log = open(tmp_path / "fluent-bit.log", "wb")
    peer = subprocess.Popen([str(FLUENT_BIT), "-c", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: len(agent.spooled_records(table)) >= RECORDS, timeout=60,
                   message=f"{RECORDS} records from Fluent Bit ({fmt}) in the spool")
    finally:
        peer.terminate()
        peer.wait(timeout=30)
    records = agent.spooled_records(table)
    assert len(records) == RECORDS, f"{len(records)} records; Fluent Bit's log: {(tmp_path / 'fluent-bit.log').read_text()[-2000:]}"
    assert all(r == {"source": "fluent-bit", "format": fmt, "nested": {"a": [1, 2, 3]}} for r in records), records[:3]
    errors = [line for line in (tmp_path / "fluent-bit.log").read_text().splitlines() if "[error]" in line]
    assert not errors, errors[:5]
