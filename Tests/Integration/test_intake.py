"""The intake protocol, spool and CLI, through the real binary and its real socket."""
import json
import random
import socket
import threading
import time

from agent_harness import Agent


def big(n: int) -> str:
    return "x" * n


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


BAD_LINES = [
    # (line, status, code)
    (b'{"a":1,"ack":"j1", oops}', 400, "invalid_json"),
    (b'{"ack":"u1","s":"\xff\xfe"}', 400, "invalid_utf8"),
    (('{"ack":"d1","x":' + nested(10) + "}").encode(), 400, "too_deep"),
    (('{"ack":"f1","f":"' + big(1_000_001) + '"}').encode(), 413, "field_too_large"),
    (b'{"ack":"m1","config":{"table":"bronze.users","mode":"merge"},"data":{"id":1}}', 422, "invalid_config"),
    (b'{"ack":"k1","config":{"table":"bronze.users","mode":"merge","primary_key":["id"]},"data":[{"id":1},{"name":"no key"}]}', 400, "missing_primary_key"),
    (b'{"ack":"t1","config":{"table":"not a table"},"data":{"a":1}}', 400, "invalid_table"),
    (('{"ack":"r1","config":{"table":"bronze.t"},"data":[' + ",".join(['{"a":1}'] * 50_001) + "]}").encode(), 413, "too_many_rows"),
]


def test_each_bad_line_gets_its_error_and_the_next_good_line_lands(agent):
    with agent.connect() as conn:
        for i, (line, status, code) in enumerate(BAD_LINES):
            reply = conn.request(line)
            assert reply["ok"] is False, reply
            assert reply["status"] == status, reply
            assert reply["code"] == code, reply
            assert reply["error"], reply
            good = conn.request(json.dumps({"n": i, "ack": f"good-{i}"}))
            assert good == {"ack": f"good-{i}", "ok": True, "accepted": 1}
        # Without an ack, a bad line is answered with its line number and a good line is not answered.
        conn.send(b'{"n":100}')
        conn.send(b"[1,2]")
        reply = conn.reply()
        assert reply["ok"] is False and reply["line"] == 2 * len(BAD_LINES) + 2 and reply["status"] == 400
        assert conn.request('{"n":101,"ack":"last"}')["ok"] is True
    records = agent.spooled_records("bronze.events")
    assert [r["n"] for r in records] == list(range(len(BAD_LINES))) + [100, 101]


def test_ack_ids_of_every_shape_come_back_as_sent_in_order(agent):
    """The reply echoes the ack id's bytes as the line spelled them (escapes included), so whatever the
    id, the writer decodes the same string, on accepted and refused lines alike, pipelined."""
    # As they appear between the quotes on the wire (JSON escapes, not Python ones).
    acks = ["1", "", r'x\u00e9\"y', r"tab\there", r"\ud834\udd1e", "é✓𝄞", r"a\\b\/c", "k" * 10_000]
    lines = [f'{{"n":{i},"ack":"{ack}"}}' for i, ack in enumerate(acks)]
    lines.append(r'{"ack":"bad\u0021","n":}')
    with agent.connect() as conn:
        conn.sock.sendall("".join(line + "\n" for line in lines).encode())
        raw = b""
        while raw.count(b"\n") < len(lines):
            chunk = conn.sock.recv(65536)
            assert chunk, raw
            raw += chunk
    replies = raw.decode().splitlines()
    for i, ack in enumerate(acks):
        assert replies[i] == f'{{"ack":"{ack}","ok":true,"accepted":1}}', replies[i][:200]
        assert json.loads(replies[i])["ack"] == json.loads(f'"{ack}"')
    refused = json.loads(replies[-1])
    assert refused["ack"] == "bad!" and refused["ok"] is False and refused["code"] == "invalid_json"
    assert replies[-1].startswith(r'{"ack":"bad\u0021","ok":false')
    assert [r["n"] for r in agent.spooled_records("bronze.events")] == list(range(len(acks)))


def test_an_over_long_line_is_refused_and_its_connection_closed_without_hurting_others(tmp_path):
    agent = Agent(tmp_path, extra_config='max_line_bytes = "64KiB"').start()
    try:
        with agent.connect() as other, agent.connect() as conn:
            assert conn.request('{"ack":"a","v":1}')["ok"]
            conn.send(b'{"v":"' + b"y" * 200_000 + b'"}')
            reply = conn.reply()
            assert reply["status"] == 413 and reply["code"] == "line_too_long" and "max_line_bytes" in reply["error"]
            assert conn.reply() is None  # closed
            assert other.request('{"ack":"b","v":2}') == {"ack": "b", "ok": True, "accepted": 1}
        with agent.connect() as again:
            assert again.request('{"ack":"c","v":3}')["ok"]
        assert [r["v"] for r in agent.spooled_records()] == [1, 2, 3]
    finally:
        agent.finish()


def test_line_endings_and_an_unfinished_last_line(tmp_path):
    """CRLF ends a line like LF; a line cut off by the end of input is refused (never half-stored), after
    the complete lines before it were answered; a line over max_line_bytes is refused even when it
    arrives whole."""
    agent = Agent(tmp_path, extra_config='max_line_bytes = "1KiB"').start()
    try:
        conn = agent.connect()
        conn.sock.sendall(b'{"ack":"a","v":1}\r\n{"ack":"b","v":2}\n{"v":3')
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.reply() == {"ack": "a", "ok": True, "accepted": 1}
        assert conn.reply() == {"ack": "b", "ok": True, "accepted": 1}
        cut = conn.reply()
        assert cut["ok"] is False and cut["line"] == 3 and cut["status"] == 400 and "newline" in cut["error"], cut
        assert conn.reply() is None
        conn.close()
        with agent.connect() as whole:
            whole.send(b'{"v":"' + b"z" * 2000 + b'"}\n')
            reply = whole.reply()
            assert reply["status"] == 413 and reply["code"] == "line_too_long" and reply["line"] == 1, reply
            assert whole.reply() is None
        assert [r["v"] for r in agent.spooled_records()] == [1, 2]
    finally:
        agent.finish()


def test_threads_are_named_and_the_event_loops_yield_the_cpu_to_delivery(tmp_path):
    """The daemon's own threads carry names an operator's `top -H` shows (writer, checkpointer, delivery (the
    delivery loop) and its workers delivery-N, datagram, and the event loops intake-N); the event loops and the
    checkpointer (intake's work) run at
    nice 15 relative to the process, the writer and delivery at the process's own: under full load
    delivery keeps its share."""
    import glob
    agent = Agent(tmp_path, extra_config=f'datagram_socket = "{tmp_path}/dgram.sock"').start()
    try:
        threads = {}
        for task in glob.glob(f"/proc/{agent.process.pid}/task/*"):
            with open(f"{task}/comm") as comm, open(f"{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
                threads.setdefault(comm.read().strip(), []).append(int(fields[16]))  # field 19: nice
        assert {"writer", "checkpointer", "delivery", "delivery-1", "delivery-2", "datagram"} <= set(threads), threads
        loops = sorted(name for name in threads if name.startswith("intake-"))
        assert loops and loops == [f"intake-{i}" for i in range(len(loops))], threads  # one per core
        base = threads["definite-agent"][0]
        low = [nice for name, nices in threads.items() if name.startswith("intake-") or name == "checkpointer" for nice in nices]
        assert all(nice == min(base + 15, 19) for nice in low), threads
        assert threads["writer"] == [base] and threads["delivery"] == [base] and threads["delivery-1"] == [base], threads
    finally:
        agent.finish()


class Client(threading.Thread):
    """Pipelines records with acks; remembers which were acknowledged, in order."""

    def __init__(self, agent, client: int, indexes: list[int]):
        super().__init__(daemon=True)
        self.agent, self.client, self.indexes = agent, client, indexes
        self.acked: list[int] = []

    def run(self):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.agent.socket_path)
        except OSError:
            return
        payload = b"".join(
            json.dumps({"client": self.client, "i": i, "pad": "p" * 120, "ack": f"{self.client}:{i}"}).encode() + b"\n"
            for i in self.indexes)

        def send():
            try:
                sock.sendall(payload)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        buffer = b""
        try:
            while len(self.acked) < len(self.indexes):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    reply = json.loads(line)
                    assert reply["ok"], reply
                    self.acked.append(int(reply["ack"].split(":")[1]))
        except OSError:
            pass
        sock.close()


def test_kill9_loses_no_acknowledged_record_and_keeps_per_client_order(tmp_path):
    clients, total = 8, 100_000
    per_client = total // clients
    agent = Agent(tmp_path).start()
    acks = {c: [] for c in range(clients)}
    pending = {c: list(range(per_client)) for c in range(clients)}
    kills = 0
    try:
        for attempt in range(4):
            threads = [Client(agent, c, pending[c]) for c in range(clients) if pending[c]]
            for t in threads:
                t.start()
            if attempt == 0:
                # Kill once a random share of the records is acknowledged (not after a fixed time: the
                # agent can take all of them in well under a second), so the kill lands mid-stream.
                share = random.uniform(0.05, 0.6)
                deadline = time.monotonic() + 60
                while sum(len(t.acked) for t in threads) < share * total and time.monotonic() < deadline:
                    time.sleep(0.001)
                agent.kill9()
                kills += 1
            for t in threads:
                t.join(timeout=120)
                assert not t.is_alive()
                acks[t.client].extend(t.acked)
                acked = set(t.acked)
                pending[t.client] = [i for i in pending[t.client] if i not in acked]
            if agent.process.poll() is not None:
                agent.start()
            if attempt == 0:
                interrupted = sum(len(p) for p in pending.values())
                assert 0 < interrupted < total, "the kill must land while records are in flight"
            if not any(pending.values()):
                break
        assert kills == 1
        assert not any(pending.values()), "some records were never acknowledged after the restart"
        assert sum(len(a) for a in acks.values()) == total
        print(f"records unacknowledged at the kill: {interrupted} of {total}")
    finally:
        agent.finish()

    spooled = {c: [] for c in range(clients)}
    for record in agent.spooled_records("bronze.events"):
        spooled[record["client"]].append(record["i"])
    for c in range(clients):
        seen = spooled[c]
        # Every acknowledged record is in the spool.
        assert set(seen) == set(range(per_client)), f"client {c}: missing {sorted(set(range(per_client)) - set(seen))[:10]}"
        # Each ack corresponds to one stored copy; the only extra copies are records committed in the
        # instant of the kill whose ack was lost and which the client therefore resent.
        extra = len(seen) - per_client
        assert 0 <= extra <= 4 * 65536, f"client {c}: {extra} extra copies"
        # Per-client order: increasing, except once where the resend after the restart begins.
        drops = sum(1 for a, b in zip(seen, seen[1:]) if b <= a)
        assert drops <= 1, f"client {c}: order broken {drops} times"
        if drops == 0:
            assert extra == 0
    # No record appears twice unless it was in flight at the kill (never acknowledged before it).
    integrity = __import__("sqlite3").connect(agent.spool_path).execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok"


def test_status_json_matches_what_was_sent(tmp_path):
    agent = Agent(tmp_path, extra_config='[[table]]\nname = "bronze.users"\nmode = "merge"\nprimary_key = ["id"]').start()
    try:
        with agent.connect() as conn:
            for i in range(250):
                conn.send(json.dumps({"i": i}))
            assert conn.request(json.dumps({"config": {"table": "bronze.users"}, "data": [{"id": k} for k in range(40)], "ack": "u"}))["accepted"] == 40
            assert conn.request('{"i":-1,"ack":"done"}')["ok"]
        status = agent.status()
        assert status["pending"] == 291
        assert status["dead_letters"] == 0
        by_table = {t["table"]: t for t in status["tables"]}
        events, users = by_table["bronze.events"], by_table["bronze.users"]
        assert events["mode"] == "append" and events["pending"] == 251
        assert users["mode"] == "merge" and users["pending"] == 40 and users["primary_key"] == ["id"]
        assert events["pending_bytes"] == sum(len(json.dumps({"i": i}, separators=(",", ":"))) + 1 for i in list(range(250)) + [-1])
        assert status["pending_bytes"] == events["pending_bytes"] + users["pending_bytes"]
        # No key in this test: delivery may already have noted that on the new tables (a race, both fine).
        assert 0 <= events["oldest_age_s"] < 60 and events["last_error"] in (None, "no API key configured") and events["dead_letters"] == 0
        human = agent.cli("status")
        assert human.returncode == 0 and b"bronze.users" in human.stdout and b"291 pending" in human.stdout
    finally:
        agent.finish()
    # status reads the spool file directly, so it works with the daemon stopped too.
    assert agent.status()["pending"] == 291


def test_send_pipelines_a_file_and_reports_each_rejected_line(agent, tmp_path):
    lines = [json.dumps({"id": i, "v": "x"}) for i in range(2000)]
    lines[10] = '{"id": 10, broken'
    lines[500] = '{"v": "no id"}'
    path = tmp_path / "records.ndjson"
    path.write_text("\n".join(lines) + "\n\n")
    result = agent.cli("send", "--table", "bronze.users", "--mode", "merge", "--primary-key", "id",
                       "--socket", agent.socket_path, str(path))
    assert result.returncode == 1
    assert result.stdout.decode().strip() == "accepted 1998, rejected 2"
    stderr = result.stderr.decode()
    assert "line 11: 400" in stderr and "line 501: 400" in stderr and "primary key" in stderr
    ok = agent.cli("send", "--table", "bronze.other", input=b'{"a":1}\n{"a":2}\n')
    assert ok.returncode == 0 and ok.stdout.decode().strip() == "accepted 2, rejected 0"
    assert len(agent.spooled_records("bronze.users")) == 1998


def test_spool_full_refuses_with_507_and_keeps_what_it_has(tmp_path):
    agent = Agent(tmp_path, extra_config="").start()
    agent.stop()
    config = open(agent.config_path).read().replace("[spool]", '[spool]\nmax_bytes = "1MiB"')
    open(agent.config_path, "w").write(config)
    agent.start()
    try:
        row = json.dumps({"pad": "z" * 1000})
        statuses = []
        with agent.connect() as conn:
            for i in range(1500):
                reply = conn.request(row[:-1] + f',"ack":"{i}"' + "}")
                statuses.append(reply["status"] if not reply["ok"] else 200)
        assert statuses[0] == 200 and statuses[-1] == 507
        first_full = statuses.index(507)
        assert all(s == 507 for s in statuses[first_full:])
        assert len(agent.spooled_records()) == first_full
        assert agent.status()["pending_bytes"] <= 1 << 20
    finally:
        agent.finish()


def test_config_check_redacts_the_key_and_names_bad_keys(tmp_path):
    agent = Agent(tmp_path)
    good = agent.cli("config", "check", env={"DEFINITE_API_KEY": "sk-live-SECRET-123"})
    assert good.returncode == 0, good.stderr
    assert b"sk-live-SECRET-123" not in good.stdout + good.stderr
    assert b"redacted" in good.stdout and b"[spool]" in good.stdout
    open(agent.config_path, "a").write('\n[batch]\nlingr = "1s"\n')
    bad = agent.cli("config", "check")
    assert bad.returncode == 78
    assert b"batch.lingr: unknown key" in bad.stderr
    run = agent.cli("run")
    assert run.returncode == 78 and b"batch.lingr" in run.stderr


def test_a_file_that_is_not_a_spool_stops_the_start_and_is_left_untouched(tmp_path):
    agent = Agent(tmp_path)
    with open(agent.spool_path, "wb") as f:
        f.write(b"precious data, not sqlite\n" * 100)
    before = open(agent.spool_path, "rb").read()
    result = agent.cli("run")
    assert result.returncode != 0
    assert b"not a SQLite database" in result.stderr and agent.spool_path.encode() in result.stderr
    assert open(agent.spool_path, "rb").read() == before


def test_sigterm_answers_what_was_read_and_exits_cleanly(agent):
    conn = agent.connect()
    conn.send(b"".join(json.dumps({"i": i, "ack": str(i)}).encode() + b"\n" for i in range(20_000)))
    first = conn.reply()
    assert first["ok"]
    assert agent.stop() == 0
    acked = 1
    while (reply := conn.reply()) is not None:
        assert reply["ok"], reply
        acked += 1
    stored = agent.spooled_records()
    assert len(stored) >= acked
    assert [r["i"] for r in stored] == list(range(len(stored)))


def test_other_processes_opening_the_spool_always_see_the_latest_commit(agent):
    """Regression: the daemon must never drop its own SQLite locks (a raw close() of the database file
    does), or another process closing its connection takes the spool for idle, checkpoints and removes
    the WAL under the daemon, and later commits become invisible to every other reader."""
    import sqlite3

    sent = 0
    with agent.connect() as conn:
        for round_ in range(30):
            for i in range(100):
                conn.send(json.dumps({"round": round_, "i": i}))
            assert conn.request(json.dumps({"round": round_, "last": True, "ack": str(round_)}))["ok"]
            sent += 101
            # A separate connection, opened and closed each time, as `sqlite3` or a backup tool would.
            db = sqlite3.connect(agent.spool_path)
            seen = db.execute("SELECT sum(record_count) FROM segments").fetchone()[0]
            db.close()
            assert seen == sent, f"round {round_}: another process sees {seen} records, {sent} were acknowledged"
    assert agent.status()["pending"] == sent


def test_a_client_that_never_reads_its_acks_is_not_read_further_and_memory_stays_bounded(agent):
    before = agent.rss_kib()
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(agent.socket_path)
    stuck.setblocking(False)
    line = (json.dumps({"pad": "q" * 180, "ack": "never-read-me"}) + "\n").encode()
    chunk = line * 5000
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sent < 200 << 20:
        try:
            sent += stuck.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
    # The agent stopped reading once its replies could not be written: the client is blocked well
    # before 200 MB, and the daemon did not buffer what it sent.
    assert sent < 200 << 20
    grown = agent.rss_kib() - before
    assert grown < 48 * 1024, f"RSS grew by {grown} KiB"
    with agent.connect() as other:
        assert other.request('{"other":1,"ack":"o"}')["ok"]
    stuck.close()


def test_a_100mb_line_without_a_newline_is_refused_with_bounded_memory(agent):
    before = agent.rss_kib()
    conn = agent.connect()
    chunk = b'{"x":"' + b"y" * (1 << 20)
    try:
        for _ in range(100):
            conn.sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = conn.reply()
    assert reply is not None and reply["status"] == 413 and reply["code"] == "line_too_long"
    conn.close()
    grown = agent.rss_kib() - before
    assert grown < 48 * 1024, f"RSS grew by {grown} KiB for a refused 100 MB line (limit 16 MiB)"
    with agent.connect() as other:
        assert other.request('{"other":1,"ack":"o"}')["ok"]


def test_ten_thousand_idle_connections_do_not_stop_other_writers(agent):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10_500:
        import pytest
        pytest.skip(f"this test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = agent.rss_kib()
    idle = []
    try:
        for _ in range(10_000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(agent.socket_path)
            idle.append(s)
        with agent.connect() as conn:
            assert conn.request('{"busy":1,"ack":"b"}') == {"ack": "b", "ok": True, "accepted": 1}
        grown = agent.rss_kib() - before
        assert grown < 96 * 1024, f"10,000 idle connections cost {grown} KiB"
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_client_sending_one_byte_at_a_time_does_not_hold_up_others(agent):
    slow = agent.connect()
    line = b'{"slow":true,"ack":"s"}\n'
    for byte in line[:-5]:
        slow.sock.send(bytes([byte]))
        time.sleep(0.02)
        with agent.connect() as other:
            assert other.request('{"fast":1,"ack":"f"}')["ok"]
    for byte in line[-5:]:
        slow.sock.send(bytes([byte]))
        time.sleep(0.02)
    assert slow.reply() == {"ack": "s", "ok": True, "accepted": 1}
    slow.close()
