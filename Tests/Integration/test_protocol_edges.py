"""Protocol edges a new user runs into, through the real binary and its real socket: a refused line keeps its
ack id wherever the member stands. Every daemon here ends with SIGTERM, and its exit status is asserted."""
from __future__ import annotations

import gzip
import json

import pytest

from agent_harness import Agent
from unix_http import request


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


def post(agent, uri: str, body: bytes, headers: dict) -> tuple[int, dict]:
    return request(agent.http_socket_path, "POST", uri, body, headers)


def test_a_bare_json_array_body_takes_its_config_from_the_query(agent):
    """Fluent Bit's out_http (`format json`) and Vector's http sink post `[{…},{…}]` with the config in the
    query: the same limits and the same answers as any other body."""
    rows = [{"id": i, "name": f"n{i}"} for i in range(30)]
    status, answer = post(agent, "/v2/stream?table=bronze.arr&mode=merge&primary_key=id",
                          gzip.compress(json.dumps(rows).encode()),
                          {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200 and answer["success"] is True and answer["successful_rows"] == 30, answer
    assert answer["table"] == "bronze.arr"
    assert agent.spooled_records("bronze.arr") == rows
    status, answer = post(agent, "/v2/stream", json.dumps(rows).encode(), {"Content-Type": "application/json"})
    assert status == 422 and "table" in answer["errors"][0], answer
    status, answer = post(agent, "/v2/stream?table=bronze.arr&mode=merge&primary_key=id", b'[{"id":1},{"name":"x"}]',
                          {"Content-Type": "application/json"})
    assert status == 400 and "primary key" in answer["errors"][0], answer
    status, answer = post(agent, "/v2/stream?table=bronze.arr", json.dumps([{"i": 1}] * 50_001).encode(),
                          {"Content-Type": "application/json"})
    assert status == 413, answer
    assert len(agent.spooled_records("bronze.arr")) == 30


def test_a_writer_that_half_closes_before_reading_gets_every_reply(agent):
    """`socat`, `nc -N` and a client that shuts down its sending side, then reads: the agent answers every line
    it read, then closes. Replies beyond what the socket buffers wait in the channel; closing the connection at
    once threw those away, acks of records already durable among them."""
    import socket

    records = 200
    lines = b"\n" * 5000 + b"".join(json.dumps({"i": i, "ack": f"a{i}"}).encode() + b"\n" for i in range(records))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket_path)
        sock.sendall(lines)
        sock.shutdown(socket.SHUT_WR)
        import time
        time.sleep(1.0)  # the agent has read everything and answered (its replies wait on us), then closes
        received = b""
        sock.settimeout(30)
        while chunk := sock.recv(1 << 16):
            received += chunk
    replies = [json.loads(line) for line in received.splitlines()]
    assert len(replies) == 5000 + records, f"{len(replies)} replies for {5000 + records} lines"
    assert [r["ack"] for r in replies if "ack" in r] == [f"a{i}" for i in range(records)]
    assert all(r["ok"] for r in replies if "ack" in r)
    assert len(agent.spooled_records()) == records


def test_a_writer_that_never_reads_its_replies_does_not_grow_the_agents_memory(agent):
    """Every line is answered, a refused one in ~100 bytes: a read of 512 KiB of empty lines once queued 56 MB
    of replies for a client that never reads them. A burst now takes at most 16,384 lines and the rest wait in
    the read buffer, so what such a client costs stays at a burst's replies and one read."""
    import socket
    import threading
    import time

    def rss_kib() -> int:
        status = open(f"/proc/{agent.process.pid}/status").read()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    before = rss_kib()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(agent.socket_path)

    def flood():
        try:
            sock.sendall(b"\n" * (8 << 20))  # blocks once the agent stops reading
        except OSError:
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    time.sleep(2.0)
    grown = rss_kib() - before
    sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked sender; the agent sees the connection end
    sender.join(timeout=10)
    sock.close()
    assert grown < 24 * 1024, f"the agent grew by {grown // 1024} MiB for one client that does not read"
    # The agent still serves others.
    with agent.connect() as conn:
        assert conn.request('{"i":1,"ack":"x"}')["ok"]


def test_unfinished_lines_and_bodies_of_all_connections_share_one_bound(agent):
    """Each connection may hold a line of up to `max_line_bytes` (16 MiB) before its newline comes, and a body
    of up to 10 MB before it ends; how many connections did so at once was bounded by nothing (a hundred writers
    in the middle of long lines held over a gigabyte). Now all of them, line and HTTP listeners together, hold
    at most 64 MiB: what would pass it is refused 503 `busy`, nothing of it is stored, and the others finish
    undisturbed."""
    import socket
    import threading

    def fields(count: int) -> bytes:
        return b",".join(b'"p%d":"%s"' % (k, b"p" * 524_000) for k in range(count))

    def unfinished(ack: str) -> socket.socket:
        """A connection that sent 15 MiB of a request of two rows (fields under the API's 1 MB, rows under its
        10 MB), not its end."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(agent.socket_path)
        sock.sendall(b'{"ack":"%s","config":{"table":"bronze.events"},"data":[{%s},{%s' % (ack.encode(), fields(15), fields(15)))
        return sock

    def send_then_read(sock: socket.socket, data: bytes) -> bytes:
        """Sends what the agent may stop reading (it answers and closes early), then reads its answer."""
        sender = threading.Thread(target=lambda: _send_ignoring_close(sock, data))
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # after the answer: the agent closed with some of what was sent unread
        sender.join()
        return answer

    held = [unfinished(f"held{i}") for i in range(4)]
    try:
        # A fifth long line passes the bound: refused, and its connection closed.
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.settimeout(30)  # without the bound, the agent kept reading: no answer, no close
        extra.connect(agent.socket_path)
        with extra:
            reply = json.loads(send_then_read(extra, b'{"ack":"extra","pad":"' + b"p" * (8 << 20)).splitlines()[0])
        assert (reply["ok"], reply["status"], reply["code"], reply["line"]) == (False, 503, "busy", 1), reply
        assert "64MiB of unfinished lines and request bodies" in reply["error"], reply
        # So does a body on the local Stream API: the bound is shared by every listener.
        http = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        http.settimeout(30)
        http.connect(agent.http_socket_path)
        body = b'{"config":{"table":"bronze.http"},"data":[{"pad":"' + b"p" * (8 << 20) + b'"}]}'
        with http:
            answer = send_then_read(http, b"POST /v2/stream HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                                    + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), head
        assert json.loads(payload)["errors"][0].startswith("the agent already holds 64MiB"), payload
        # The connections holding long lines were not disturbed: each finishes its line and gets its ack.
        for i, sock in enumerate(held):
            sock.sendall(b"}]}\n")
            reply = json.loads(sock.makefile("rb").readline())
            assert reply == {"ack": f"held{i}", "ok": True, "accepted": 2}, reply
    finally:
        for sock in held:
            sock.close()
    # With the long lines finished, there is room again.
    status, answer = post(agent, "/v2/stream", b'{"config":{"table":"bronze.http"},"data":[{"i":1}]}',
                          {"Content-Type": "application/json"})
    assert status == 200, answer
    assert len(agent.spooled_records("bronze.events")) == 8
    assert agent.spooled_records("bronze.http") == [{"i": 1}]


def _send_ignoring_close(sock, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent answered and closed before reading all of it, as it should


def test_a_gzip_body_of_several_members_is_read_whole_and_trailing_bytes_are_refused(agent):
    """RFC 1952 lets gzip data be several members (`cat a.gz b.gz`, a file appended to with
    `gzip.open(path, "ab")`). Only the first was inflated: the answer said 200 for its rows, and the others were
    gone. Bytes after a member that start no other one were ignored too."""
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    members = gzip.compress(b'{"id":1}\n{"id":2}\n') + gzip.compress(b'{"id":3}\n{"id":4}\n')
    status, answer = post(agent, "/v2/stream?table=bronze.members", members, headers)
    assert status == 200 and answer["successful_rows"] == 4, answer
    assert agent.spooled_records("bronze.members") == [{"id": i} for i in range(1, 5)]
    status, answer = post(agent, "/v2/stream?table=bronze.members", gzip.compress(b'{"id":5}\n') + b'GARBAGE{"id":6}\n',
                          headers)
    assert status == 400 and answer["errors"] == [
        "the body has 16 bytes after the end of its gzip data that do not start another gzip member; nothing was stored"], answer
    assert len(agent.spooled_records("bronze.members")) == 4


def test_a_client_that_expects_100_continue_is_told_to_go_on_at_once(agent):
    """curl and libcurl send `Expect: 100-continue` before a body over 1 MB and wait a second for the answer:
    every large request took a second longer."""
    import socket

    body = b'{"config":{"table":"bronze.expect"},"data":[{"i":1}]}'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(agent.http_socket_path)
        sock.sendall(b"POST /v2/stream HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = sock.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert agent.spooled_records("bronze.expect") == [{"i": 1}]
