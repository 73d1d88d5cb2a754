#!/usr/bin/env python3
"""How `spool-v2.db` was made: with definite-agent at commit 7a5c59b (spool schema version 2, the layout of
the last landed release before version 3: segments with a rowid and an index, targets rewritten at every
commit, 16 KiB pages), against the emulator. It holds 20 delivered rows of bronze.events and one dead letter
(row i=3, refused); then, with the API failing every request: 60 pending rows of bronze.events in one-row
requests, 30 of them with their own config.tags.trace_id (small segments), a 400-row request of bronze.events
(a segment of several KiB), 30 pending upserts of 7 keys of bronze.users; then a clean SIGTERM stop.

    cp <release or debug build of 7a5c59b> /tmp/v2/definite-agent
    DEFINITE_AGENT_BIN=/tmp/v2/definite-agent Tests/Fixtures/make-spool-v2.py OUT_DIR

The spool is OUT_DIR/spool.db (its WAL is empty after the clean stop). Tests copy the fixture before use.
"""
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))
sys.path.insert(0, str(ROOT / "Tests" / "Integration"))

from harness import Emulator  # noqa: E402
from agent_harness import Agent, agent_config, wait_until  # noqa: E402

directory = Path(sys.argv[1])
shutil.rmtree(directory, ignore_errors=True)
emu = Emulator(quiet=True)
emu.control(reject_marker="poison", reject_marker_mode="request")
agent = Agent(directory, default_table="bronze.events", env={"DEFINITE_API_KEY": emu.api_key},
              extra_config=agent_config(emu.stream_url, batch={"max_rows": 20}, retry={"initial": "30s", "max": "60s"},
                                        tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},)))
agent.start()
with agent.connect() as c:
    rows = [{"i": i, "text": f"delivered {i}", **({"poison": 1} if i == 3 else {})} for i in range(20)]
    assert c.request(json.dumps({"data": rows, "config": {"table": "bronze.events"}, "ack": "a"}))["ok"]
wait_until(lambda: agent.status()["pending"] == 0, 20)
emu.control(error_rate=1.0)
with agent.connect() as c:
    for i in range(100, 160):
        config = {"table": "bronze.events", **({"tags": {"trace_id": f"t-{i}"}} if i % 2 else {})}
        assert c.request(json.dumps({"data": {"i": i, "text": f"pending {i}"}, "config": config, "ack": f"b{i}"}))["ok"]
    rows = [{"i": i, "text": f"bulk {i}", "pad": "x" * 40} for i in range(1000, 1400)]
    assert c.request(json.dumps({"data": rows, "config": {"table": "bronze.events"}, "ack": "bulk"}))["ok"]
    upserts = [{"id": k % 7, "v": k} for k in range(30)]
    config = {"table": "bronze.users", "mode": "merge", "primary_key": ["id"]}
    assert c.request(json.dumps({"data": upserts, "config": config, "ack": "c"}))["ok"]
wait_until(lambda: all(t["state"] == "backing off" for t in agent.status()["tables"] if t["pending"]), 20)
time.sleep(0.5)
assert agent.stop() == 0
emu.stop()
db = sqlite3.connect(agent.spool_path)
print("segments", db.execute("SELECT target_id, first_seq, record_count, byte_count, tags FROM segments").fetchall())
print("user_version", db.execute("PRAGMA user_version").fetchone()[0], "page_size", db.execute("PRAGMA page_size").fetchone()[0])
