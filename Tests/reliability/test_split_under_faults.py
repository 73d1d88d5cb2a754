"""Splitting a refused batch (400) while the API also fails transiently (5xx): every poison row is dead-lettered
once, every good row lands once. (Found while driving the secrets test: poison rows plus 30 % 5xx.)"""
from __future__ import annotations

import json
import sqlite3

import pytest

from agent_harness import Agent, agent_config
from harness import Emulator
from reliability_common import wait_until

TABLE = "bronze.split_faults"




@pytest.mark.parametrize("error_rate", [0.0, 0.3])
def test_400_split_with_5xx_retries_dead_letters_each_poison_row_once(tmp_path, error_rate):
    emu = Emulator(quiet=True, seed=11)
    emu.control(error_rate=error_rate, reject_marker="poison", reject_marker_mode="request")
    agent = Agent(tmp_path / "agent", default_table=TABLE, env={"DEFINITE_API_KEY": emu.api_key},
                  extra_config=agent_config(emu.stream_url))
    try:
        agent.start()
        poison = {3, 17}
        with agent.connect() as conn:
            reply = conn.request(json.dumps({"data": [{"i": i, **({"poison": True} if i in poison else {})}
                                                      for i in range(40)], "config": {"table": TABLE}, "ack": "a"}))
            assert reply["ok"], reply
        try:
            wait_until(lambda: agent.status()["pending"] == 0, 12, message="pending 0")
        finally:
            trail = [(r["rows"], r["status"]) for r in emu.requests()]
            print(f"requests (rows, status): {trail[:60]}{' ...' if len(trail) > 60 else ''}")
            if emu.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'split_faults'"):
                print("lake:", emu.query(f"SELECT count(*) AS n, count(DISTINCT i) AS d FROM lake.{TABLE}"))
        db = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
        letters = db.execute("SELECT records, attempts FROM dead_letters ORDER BY id").fetchall()
        db.close()
        dead = [json.loads(bytes(r).strip())["i"] for r, _ in letters]
        landed = [r["i"] for r in emu.query(f"SELECT i FROM lake.{TABLE}")]
        requests = emu.requests()
        print(f"error_rate {error_rate}: {len(requests)} requests, dead letters {dead}, "
              f"lake {len(landed)} rows ({len(set(landed))} distinct)")
        assert sorted(dead) == sorted(poison), f"dead letters: {dead} (each poison row once expected)"
        assert sorted(landed) == sorted(set(range(40)) - poison), "good rows must land exactly once"
    finally:
        agent.kill9()
        print(agent.log()[-3000:])
        emu.stop()
