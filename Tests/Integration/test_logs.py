"""What the daemon's log looks like: logfmt (the default: message first, values quoted only when needed,
addresses as written in the configuration) or one JSON object per line; refused lines without an ack and
refused datagrams are logged at debug level, at most about one a second. Every daemon ends with SIGTERM and
must exit 0."""
from __future__ import annotations

import json
import re
import socket
import time

from agent_harness import Agent, free_port

LOGFMT = re.compile(r'^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(trace|debug|info|notice|warning|error|critical) '
                    r'msg=("([^"\\]|\\.)*"|\S+)( [a-z_]+=("([^"\\]|\\.)*"|\S+))*$')


def test_logfmt_is_the_default_with_the_message_first_and_plain_addresses(tmp_path):
    port = free_port()
    agent = Agent(tmp_path / "agent", extra_config=f'http_listen = "127.0.0.1:{port}"\nhttp_token = "t"').start()
    assert agent.stop() == 0, agent.log()[-3000:]
    lines = agent.log().splitlines()
    assert lines and all(LOGFMT.match(line) for line in lines), [line for line in lines if not LOGFMT.match(line)]
    assert any(line.split(" ", 2)[2].startswith('msg=starting') for line in lines), lines
    assert any("msg=listening" in line and f"on=127.0.0.1:{port} " in line for line in lines), lines
    assert any(f"path={agent.spool_path}" in line for line in lines)


def test_json_format_writes_one_object_per_line(tmp_path):
    agent = Agent(tmp_path / "agent", extra_config='[log]\nformat = "json"').start()
    assert agent.stop() == 0, agent.log()[-3000:]
    events = [json.loads(line) for line in agent.log().splitlines()]
    assert events and all({"time", "level", "msg"} <= set(e) for e in events), events
    assert any(e["msg"] == "spool open" and e["path"] == agent.spool_path for e in events), events
    assert events[-1]["msg"] == "stopped cleanly"


def test_refusals_nobody_is_told_about_are_logged_at_debug_a_line_a_second(tmp_path):
    datagrams = str(tmp_path / "agent" / "agent.dgram")
    agent = Agent(tmp_path / "agent", extra_config=f'datagram_socket = "{datagrams}"\n[log]\nlevel = "debug"').start()
    try:
        started = time.monotonic()
        with agent.connect() as conn:
            for i in range(200):
                conn.send(b'{"broken": ')  # no ack: the writer may never read the 400 it gets
            conn.send(b'{"ack":"last","ok":1}')
            while (reply := conn.reply()) and reply.get("ack") != "last":
                pass
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for i in range(200):
                sender.sendto(b'{"config":{"table":"bronze.t","mode":"merge"},"data":{"id":1}}', datagrams)
        time.sleep(1.5)
        bound = 2 + int(time.monotonic() - started)  # about a line a second, however slow the machine
        log = agent.log()
        lines = [line for line in log.splitlines() if "refused an intake line sent without an ack id" in line]
        assert 1 <= len(lines) <= bound, lines
        assert "level=debug" in lines[0] and "code=invalid_json" in lines[0] and "line=1 " in lines[0], lines[0]
        dgram = [line for line in log.splitlines() if 'msg="refused a datagram"' in line]
        assert 1 <= len(dgram) <= bound and "code=invalid_config" in dgram[0], dgram
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
    quiet = Agent(tmp_path / "quiet").start()
    try:
        with quiet.connect() as conn:
            conn.send(b'{"broken": ')
            assert conn.reply()["code"] == "invalid_json"
    finally:
        assert quiet.stop() == 0
    assert "refused an intake line" not in quiet.log()


def test_the_line_that_starts_isolating_bad_rows_says_what_the_api_refused(tmp_path):
    """It said error="" nearly every time: the change that first reads "isolating" is mostly the answer to a
    half that was written."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Tests" / "Emulator"))
    from harness import Emulator

    with Emulator(quiet=True) as emu:
        emu.control(reject_marker="bad", reject_marker_mode="request")
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key},
                      extra_config=f'[api]\nurl = "{emu.stream_url}"\n[batch]\nlinger = "50ms"\n').start()
        try:
            with agent.connect() as conn:
                for i in range(64):
                    assert conn.request(json.dumps({"i": i, **({"bad": 1} if i == 41 else {}), "ack": str(i)}))["ok"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "rows dead-lettered" not in agent.log():
                time.sleep(0.1)
        finally:
            assert agent.stop() == 0, agent.log()[-3000:]
    lines = [line for line in agent.log().splitlines() if "isolating them while the rest is delivered" in line]
    assert len(lines) == 1, agent.log()[-3000:]
    assert 'error="HTTP 400: ' in lines[0], lines[0]
