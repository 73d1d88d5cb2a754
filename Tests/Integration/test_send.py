"""`definite-agent send` accounts for every line: a line over max_line_bytes (the agent closes the connection),
an agent restart in the middle of a file, a full spool (wait and retry, or `--no-wait` with one summary
line), and a row the agent refuses in a request of many lines (a merge key only the agent's configuration asks
for). Lines written slowly to its standard input go without waiting for more. Its options: --primary-key
implies merge and names one column, --table defaults to [intake] default_table, an unreadable file exits 66
with the reason. Every daemon ends with SIGTERM and must exit 0."""
from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, agent_binary, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402


@pytest.fixture
def make_agent(tmp_path):
    made: list[Agent] = []

    def make(name: str = "agent", **kwargs) -> Agent:
        agent = Agent(tmp_path / name, **kwargs)
        made.append(agent)
        return agent.start()

    yield make
    for agent in made:
        assert agent.stop() == 0, agent.log()[-3000:]


def write_lines(path: Path, records: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def serve_elsewhere(path: str, serve) -> socket.socket:
    """A Unix stream socket at `path` that is not the agent: `serve(server)` runs on a thread of its own."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    return server


def test_a_line_over_max_line_bytes_is_reported_and_every_other_line_lands_in_order(make_agent, tmp_path):
    agent = make_agent(extra_config='max_line_bytes = "1KiB"')
    records: list[dict | str] = [{"i": i} for i in range(100)]
    records[50] = {"i": 50, "pad": "x" * 2000}
    result = agent.cli("send", str(write_lines(tmp_path / "records.ndjson", records)))
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout.decode().strip() == "accepted 99, rejected 1"
    stderr = result.stderr.decode()
    assert "line 51: 413: the line is longer than [intake] max_line_bytes (1KiB)\n" in stderr, stderr
    assert "not confirmed" not in stderr and "twice" not in stderr, stderr
    assert [r["i"] for r in agent.spooled_records()] == [i for i in range(100) if i != 50]


def test_lines_acknowledged_before_a_long_line_closed_the_connection_are_not_sent_again(make_agent, tmp_path):
    """The agent answers the requests it read before the long line, then closes. send, still writing, used to
    take the refused write for the end and send every request in flight again without reading those
    answers: thousands of lines stored twice, and as many more times as long lines followed."""
    agent = make_agent(extra_config='max_line_bytes = "64KiB"')
    count, long_lines = 150_000, {60_000, 100_000}
    records = [{"i": i, "pad": "p" * (200_000 if i in long_lines else 60)} for i in range(count)]
    result = agent.cli("send", str(write_lines(tmp_path / "records.ndjson", records)))
    assert result.stdout.decode().strip() == f"accepted {count - 2}, rejected 2", result.stderr.decode()[-2000:]
    assert "twice" not in result.stderr.decode(), result.stderr.decode()[-2000:]
    stored = [r["i"] for r in agent.spooled_records()]
    assert len(stored) == len(set(stored)), f"{len(stored) - len(set(stored))} lines stored twice"
    assert stored == [i for i in range(count) if i not in long_lines]


def test_send_paces_its_reconnects_to_a_socket_that_closes_every_connection_unanswered(make_agent, tmp_path):
    """A program that accepts and closes at once (not the agent, or an agent failing every start): send used
    to reconnect at full speed, hundreds of thousands of connections a minute. Now each connection lost
    without an answer waits twice as long before the next (0.1 s, 0.2 s, ...), and after a minute send gives
    up with exit 69."""
    agent = make_agent()
    path = str(tmp_path / "closer.sock")
    connections = []

    def accept_and_close(server):
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connections.append(time.monotonic())
            connection.close()

    server = serve_elsewhere(path, accept_and_close)
    process = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path, "--socket", path],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        process.stdin.write(b'{"a":1}\n' * 10)
        process.stdin.flush()
        # 0.1, 0.2, 0.4 s apart. Fewer than 4 means send did not notice its connections end while its input
        # was quiet (it once waited for more input first, with replies due).
        wait_until(lambda: len(connections) >= 4, timeout=15, message=f"{len(connections)} connections")
        time.sleep(1)
        assert process.poll() is None, "send still tries"
        gaps = [later - earlier for earlier, later in zip(connections, connections[1:])]
        assert len(connections) <= 7 and gaps[0] >= 0.09, f"{len(connections)} connections, {gaps}"
        assert all(later > 1.5 * earlier for earlier, later in zip(gaps, gaps[1:])), f"the pauses double: {gaps}"
    finally:
        process.terminate()  # send, not the daemon: it would go on trying for a minute
        process.communicate(timeout=10)
        server.close()


def test_send_reconnects_across_an_agent_restart_and_accounts_for_every_line(make_agent, tmp_path):
    agent = make_agent()
    lines = 3000
    process = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed():
        for i in range(lines):
            process.stdin.write(json.dumps({"i": i}).encode() + b"\n")
            if i % 50 == 49:
                process.stdin.flush()
                time.sleep(0.05)
        process.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_until(lambda: len(agent.spooled_records()) >= 300, timeout=30, message="a first part of the lines spooled")
    assert agent.stop() == 0, agent.log()[-3000:]
    time.sleep(0.5)
    agent.start()
    feeder.join(timeout=120)
    assert process.wait(timeout=120) == 0, process.stderr.read().decode()
    out, err = process.stdout.read(), process.stderr.read()
    assert out.decode().strip() == f"accepted {lines}, rejected 0", err.decode()
    spooled = [r["i"] for r in agent.spooled_records()]
    assert set(spooled) == set(range(lines)), f"missing: {sorted(set(range(lines)) - set(spooled))[:20]}"


def test_a_merge_key_only_the_agent_knows_refuses_each_line_without_it_by_its_number(make_agent, tmp_path):
    agent = make_agent(extra_config='[[table]]\nname = "bronze.users"\nmode = "merge"\nprimary_key = ["id"]')
    records: list[dict | str] = [{"id": i, "v": i} for i in range(3000)]
    records[10] = {"v": "no id"}
    records[2500] = {"v": "no id"}
    path = write_lines(tmp_path / "users.ndjson", records)
    # With --socket and --table send reads no configuration: only the agent knows that the table merges.
    result = agent.cli("send", "--socket", agent.socket_path, "--table", "bronze.users", str(path))
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout.decode().strip() == "accepted 2998, rejected 2"
    stderr = result.stderr.decode()
    assert "line 11: 400" in stderr and "line 2501: 400" in stderr and "primary key" in stderr, stderr
    assert stderr.count("sending every line alone") == 1, stderr
    assert sorted(r["id"] for r in agent.spooled_records("bronze.users")) == [i for i in range(3000) if i not in (10, 2500)]


def test_lines_written_slowly_go_without_waiting_for_more(make_agent):
    agent = make_agent()
    process = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(5)))
    process.stdin.flush()
    wait_until(lambda: len(agent.spooled_records()) == 5, timeout=30, message="the first lines spooled while stdin is open")
    process.stdin.write(b'{"i": 5}\n')
    process.stdin.close()
    assert process.wait(timeout=60) == 0, process.stderr.read().decode()
    assert process.stdout.read().decode().strip() == "accepted 6, rejected 0"


def full_spool_agent(make_agent, emu: Emulator) -> Agent:
    """An agent whose 1 MiB spool cannot drain while the emulator answers 503."""
    emu.control(force={"status": 503, "count": 1_000_000})
    return make_agent(spool_config='max_bytes = "1MiB"', env={"DEFINITE_API_KEY": emu.api_key},
                      extra_config=f'[api]\nurl = "{emu.stream_url}"\n[batch]\nlinger = "50ms"\n[retry]\ninitial = "50ms"\nmax = "200ms"\n')


def test_a_full_spool_makes_send_wait_and_retry_with_one_line_said(make_agent, tmp_path):
    with Emulator(quiet=True) as emu:
        agent = full_spool_agent(make_agent, emu)
        path = write_lines(tmp_path / "records.ndjson", [{"i": i, "pad": "z" * 1000} for i in range(2000)])
        process = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path, str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: agent.status()["pending_bytes"] > 900_000, timeout=60, message="the spool filled")
        time.sleep(2)  # send waits (and retries) while the spool stays full
        assert process.poll() is None, process.communicate()
        emu.control(force=None)  # delivery drains the spool; the waiting lines go again
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == "accepted 2000, rejected 0"
        said = err.decode().splitlines()
        assert len(said) == 2, said
        assert "spool is full" in said[0] and "waited for room" in said[1], said
        wait_until(lambda: agent.status()["pending"] == 0, timeout=60, message="everything delivered")
        assert emu.scalar("SELECT count(DISTINCT i) FROM lake.bronze.events") == 2000


def test_no_wait_counts_lines_refused_for_room_in_one_summary_line(make_agent, tmp_path):
    with Emulator(quiet=True) as emu:
        agent = full_spool_agent(make_agent, emu)
        path = write_lines(tmp_path / "records.ndjson", [{"i": i, "pad": "z" * 1000} for i in range(2000)])
        result = agent.cli("send", "--no-wait", str(path))
        assert result.returncode == 1
        accepted, rejected = (int(part.split()[-1]) for part in result.stdout.decode().strip().split(", "))
        assert accepted + rejected == 2000 and rejected > 500, result.stdout
        said = result.stderr.decode().splitlines()
        assert len(said) == 1 and f"{rejected} lines refused because the agent's spool is full" in said[0], said
        assert len(agent.spooled_records()) == accepted


def test_send_options_primary_key_default_table_and_unreadable_file(make_agent, tmp_path):
    agent = make_agent(default_table="bronze.defaults")
    merged = agent.cli("send", "--table", "bronze.users", "--primary-key", "id",
                       input=b'{"id":1,"v":"a"}\n{"id":2,"v":"b"}\n')
    assert merged.returncode == 0 and merged.stdout.decode().strip() == "accepted 2, rejected 0", merged.stderr
    targets = {t["table"]: t for t in agent.status()["tables"]}
    assert targets["bronze.users"]["mode"] == "merge" and targets["bronze.users"]["primary_key"] == ["id"]

    composite = agent.cli("send", "--table", "bronze.users", "--primary-key", "id,name", input=b"")
    assert composite.returncode == 64 and b"exactly one column" in composite.stderr, composite.stderr
    contradiction = agent.cli("send", "--table", "bronze.users", "--mode", "append", "--primary-key", "id", input=b"")
    assert contradiction.returncode == 64 and b"only to merge" in contradiction.stderr, contradiction.stderr

    defaulted = agent.cli("send", input=b'{"d":1}\n')
    assert defaulted.returncode == 0, defaulted.stderr
    assert agent.spooled_records("bronze.defaults") == [{"d": 1}]

    missing = agent.cli("send", str(tmp_path / "missing.ndjson"))
    assert missing.returncode == 66
    assert b"missing.ndjson" in missing.stderr and b"No such file" in missing.stderr, missing.stderr


def test_send_without_a_table_or_a_default_table_says_so(make_agent):
    agent = make_agent(default_table=None)
    result = agent.cli("send", input=b'{"d":1}\n')
    assert result.returncode == 64 and b"default_table" in result.stderr, result.stderr


def test_a_byte_order_mark_before_the_first_line_is_not_part_of_it(make_agent, tmp_path):
    """Files saved by some editors start with a UTF-8 byte order mark; the first line was refused as "each
    line must be a JSON object"."""
    agent = make_agent()
    path = tmp_path / "bom.ndjson"
    path.write_bytes(b'\xef\xbb\xbf{"i":0}\n{"i":1}\n')
    result = agent.cli("send", str(path))
    assert result.returncode == 0 and result.stdout.decode().strip() == "accepted 2, rejected 0", result.stderr.decode()
    assert [r["i"] for r in agent.spooled_records()] == [0, 1]


def test_send_to_a_socket_that_answers_but_is_not_the_agent_exits_69(make_agent, tmp_path):
    """A --socket that another program answers on (an HTTP server, say) exited 1, "some records rejected",
    as if the agent had refused lines: it is not the agent, as when nobody listens (69)."""
    agent = make_agent()
    path = str(tmp_path / "other.sock")

    def answer_like_a_web_server(server):
        connection, _ = server.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(2)
        connection.close()

    server = serve_elsewhere(path, answer_like_a_web_server)
    result = subprocess.run([agent_binary(), "send", "--config", agent.config_path, "--socket", path], input=b'{"a":1}\n',
                            capture_output=True, timeout=60)
    server.close()
    assert result.returncode == 69, (result.returncode, result.stderr.decode())
    assert f"what answers at {path} is not the agent" in result.stderr.decode()


def test_send_says_when_the_agent_has_not_answered_for_a_while(make_agent, tmp_path):
    """A socket that takes lines and never answers (an agent that hangs) left send waiting without a word:
    after a while it says so on stderr, and keeps waiting; SIGTERM ends it."""
    agent = make_agent()
    path = str(tmp_path / "silent.sock")
    connections = []

    def read_and_never_answer(server):
        connection, _ = server.accept()
        connections.append(connection)
        while connection.recv(65536):
            pass

    server = serve_elsewhere(path, read_and_never_answer)
    send = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path, "--socket", path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        send.stdin.write(b'{"a":1}\n{"a":2}\n{"a":3}\n')
        send.stdin.close()
        started = time.monotonic()
        stderr = b""
        while b"no reply from the agent" not in stderr and time.monotonic() - started < 40:
            if select.select([send.stderr], [], [], 1.0)[0]:
                stderr += send.stderr.read1(4096)
        elapsed = time.monotonic() - started
        message = stderr.decode()
        assert f"warning: no reply from the agent at {path} for 20 s with 3 lines waiting for one; still waiting" in message, message
        assert 19 <= elapsed < 30, elapsed
        assert send.poll() is None, "send gave up on lines that may have been stored"
        send.terminate()
        assert send.wait(timeout=10) == -15
        # Stopped, it still says what became of the lines: none was confirmed, and from where to send again.
        assert send.stdout.read().decode().strip() == "accepted 0, rejected 0, not confirmed 3"
        said = send.stderr.read().decode()
        assert ("interrupted by SIGTERM; stopped after reading 3 lines; 3 lines from line 1 on were sent but not confirmed: "
                "they may or may not be stored; no line was answered: to finish, send the whole input again") in said, said
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()
        for connection in connections:
            connection.close()
        server.close()


def test_ctrl_c_stops_send_with_its_summary_and_the_line_to_go_on_from(make_agent):
    """Ctrl-C (or SIGTERM) ended send at once without a word: whoever stopped a long load could not tell
    what the agent had stored. It now prints its summary and the line to send again from, then ends by the
    signal (a shell sees it killed by SIGINT)."""
    agent = make_agent()
    send = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        send.stdin.write(b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(100)))
        send.stdin.flush()
        wait_until(lambda: len(agent.spooled_records()) == 100, timeout=30, message="the lines spooled")
        send.send_signal(signal.SIGINT)  # waiting for more input on an open stdin
        assert send.wait(timeout=10) == -signal.SIGINT
        assert send.stdout.read().decode().strip() == "accepted 100, rejected 0"
        said = send.stderr.read().decode()
        assert said.strip() == ("interrupted by SIGINT; stopped after reading 100 lines; every line before line 101 was "
                                "answered (the counts above); to finish, send the input again from line 101 (tail -n +101 FILE)"), said
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()


def test_ctrl_c_while_send_waits_for_room_counts_what_was_stored_and_what_was_not(make_agent, tmp_path):
    """A full spool and Ctrl-C together: send, waiting for room with lines refused, stops within moments,
    and its counts match the spool: every line before the one it names is stored, and none it calls not
    confirmed was stored."""
    with Emulator(quiet=True) as emu:
        agent = full_spool_agent(make_agent, emu)
        path = write_lines(tmp_path / "records.ndjson", [{"i": i, "pad": "z" * 1000} for i in range(2000)])
        send = subprocess.Popen([agent_binary(), "send", "--config", agent.config_path, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stderr = b""
            started = time.monotonic()
            while b"spool is full" not in stderr and time.monotonic() - started < 60:
                if select.select([send.stderr], [], [], 1.0)[0]:
                    stderr += send.stderr.read1(4096)
            assert b"spool is full" in stderr, stderr
            send.send_signal(signal.SIGINT)
            assert send.wait(timeout=10) == -signal.SIGINT
            summary = send.stdout.read().decode().strip()
            said = (stderr + send.stderr.read()).decode()
        finally:
            if send.poll() is None:
                send.kill()
                send.wait()
        counts = dict(part.rsplit(" ", 1) for part in summary.split(", "))
        accepted, unconfirmed = int(counts["accepted"]), int(counts.get("not confirmed", 0))
        assert counts["rejected"] == "0" and accepted > 0 and unconfirmed > 0, summary
        resume = int(said.split("send the input again from line ")[1].split()[0])
        # Lines refused for room (507) and waiting to go again are said to be not stored, the others in
        # flight to be perhaps stored: together, what the summary calls not confirmed.
        waiting = int(said.split(" lines the agent refused for room")[0].rsplit("; ", 1)[1]) if "refused for room" in said else 0
        in_flight = int(said.split(" lines from line ")[0].rsplit("; ", 1)[1]) if " lines from line " in said else 0
        assert waiting + in_flight == unconfirmed and waiting > 0, said
        stored = sorted(r["i"] for r in agent.spooled_records())
        assert len(stored) == accepted, (len(stored), summary)
        assert stored[:resume - 1] == list(range(resume - 1)), "a line before the one to go on from is not stored"
        assert resume - 1 not in stored, "the line to go on from was stored"
