"""Protocol edges a new user runs into, through the real binary and its real socket: a refused line keeps its
ack id wherever the member stands. Every daemon here ends with SIGTERM, and its exit status is asserted."""
from __future__ import annotations

import json

import pytest

from agent_harness import Agent


@pytest.fixture
def agent(tmp_path):
    running = Agent(tmp_path / "agent").start()
    yield running
    assert running.stop() == 0, running.log()[-3000:]


def test_a_refused_line_carries_its_ack_wherever_the_member_stands(agent):
    """Python's json.dumps keeps a dict's insertion order, so "ack" often comes last, after the member the
    line is refused for; a client correlating replies by id must still get its id back."""
    cases = [
        ({"data": {"id": 2}, "config": {"table": "bronze.t", "mode": "merge"}}, 422, "invalid_config"),
        ({"data": {"id": 2}, "config": {"table": "not a table"}}, 400, "invalid_table"),
        ({"data": {"id": 2}, "config": {"table": "bronze.t", "mode": "upsert"}}, 422, "invalid_config"),
        ({"config": {"table": "bronze.t", "mode": "merge", "primary_key": ["id"]}, "data": [{"v": 1}]}, 400,
         "missing_primary_key"),
        ({"x": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}}}, 400, "too_deep"),
    ]
    with agent.connect() as conn:
        for i, (body, status, code) in enumerate(cases):
            line = json.dumps({**body, "ack": f"b{i}"})
            assert line.endswith(f'"ack": "b{i}"}}')
            reply = conn.request(line)
            assert reply["ack"] == f"b{i}" and reply["ok"] is False, reply
            assert (reply["status"], reply["code"]) == (status, code), reply
            assert "line" not in reply, reply
        # A line that is not JSON has no ack to give back: it is answered with its line number.
        conn.send('{"data": {"id": 2,}, "ack": "lost"}')
        reply = conn.reply()
        assert "ack" not in reply and reply["line"] == len(cases) + 1 and reply["code"] == "invalid_json", reply
    assert agent.spooled_records() == []
