"""The local Stream API: POST /v2/stream over HTTP on a Unix socket and a loopback port, answered once
the rows are durable, with the real API's request format, limits and status codes."""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))
sys.path.insert(0, str(ROOT / "docs" / "clients" / "python"))

from agent_harness import Agent, free_port, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402


def rows(emu, table: str) -> int:
    try:
        return emu.scalar(f"SELECT count(*) FROM lake.bronze.{table}")
    except RuntimeError:  # not created yet
        return 0


DOCUMENTED_FIELDS = {"success", "request_id", "stream_id", "table", "accepted", "successful_rows", "rejected_rows",
                     "partitions", "snapshot_id", "warnings", "errors"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    with Emulator() as emu:
        port = free_port()
        agent = Agent(tmp / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
http_listen = "127.0.0.1:{port}"
[api]
url = "{emu.stream_url}"
[batch]
linger = "50ms"
""").start()
        try:
            yield agent, emu, f"http://127.0.0.1:{port}/v2/stream"
        finally:
            agent.finish()


def test_curl_over_the_unix_socket_lands_rows_that_reach_the_lake(setup, tmp_path):
    agent, emu, _ = setup
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"data": [{"id": i, "s": "x"} for i in range(25)], "config": {"table": "bronze.http_curl"}}))
    out = subprocess.run(["curl", "-s", "-i", "--unix-socket", agent.http_socket_path, "-H", "Content-Type: application/json",
                          "--data-binary", f"@{body}", "http://localhost/v2/stream"], capture_output=True, timeout=30)
    head, _, payload = out.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-agent-spooled: true" in head.lower()
    answer = json.loads(payload)
    assert set(answer) == DOCUMENTED_FIELDS
    assert answer["success"] is True and answer["successful_rows"] == 25 and answer["accepted"] == 25
    assert answer["snapshot_id"] is None and any("spooled locally" in w for w in answer["warnings"])
    wait_until(lambda: rows(emu, "http_curl") == 25)


def test_requests_json_ndjson_and_gzip_over_the_loopback_port(setup):
    agent, emu, url = setup
    with requests.Session() as http:  # one keep-alive connection for all three
        r = http.post(url, json={"data": {"id": 1}, "config": {"table": "bronze.http_py"}})
        assert r.status_code == 200 and r.headers["X-Agent-Spooled"] == "true"
        assert any("config.wait" in w for w in r.json()["warnings"]) and r.json()["snapshot_id"] is None
        ndjson = "\n".join(json.dumps({"id": i}) for i in range(2, 12)) + "\n"
        r = http.post(url + "?table=bronze.http_py&mode=merge&primary_key=id", data=ndjson,
                      headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json()["successful_rows"] == 10
        packed = gzip.compress(json.dumps({"data": [{"id": i} for i in range(12, 40)], "config": {"table": "bronze.http_py"}}).encode())
        r = http.post(url, data=packed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json()["successful_rows"] == 28
    wait_until(lambda: rows(emu, "http_py") == 39)


INVALID = [
    # (description, body bytes, headers, url suffix)
    ("invalid JSON", b'{"data": [', {"Content-Type": "application/json"}, ""),
    ("merge without primary_key", json.dumps({"data": {"id": 1}, "config": {"table": "bronze.t", "mode": "merge"}}).encode(), {"Content-Type": "application/json"}, ""),
    ("composite primary key", json.dumps({"data": {"a": 1}, "config": {"table": "bronze.t", "mode": "merge", "primary_key": ["a", "b"]}}).encode(), {"Content-Type": "application/json"}, ""),
    ("more than 50,000 rows", json.dumps({"data": [{"a": 1}] * 50_001, "config": {"table": "bronze.t"}}).encode(), {"Content-Type": "application/json"}, ""),
    ("body over 10 MB", json.dumps({"data": [{"a": "x" * 900_000}] * 12, "config": {"table": "bronze.t"}}).encode(), {"Content-Type": "application/json"}, ""),
    ("not gzip", b"plainly not gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, ""),
    ("NDJSON with a bad line", b'{"a":1}\n{"a":\n', {"Content-Type": "application/x-ndjson"}, "?table=bronze.t"),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_each_invalid_request_gets_the_same_status_as_from_the_stream_api(setup, case):
    agent, emu, url = setup
    _, body, headers, suffix = case
    mine = requests.post(url + suffix, data=body, headers=headers, timeout=60)
    theirs = requests.post(emu.stream_url + suffix, data=body, headers=dict(headers, Authorization=f"Bearer {emu.api_key}"), timeout=60)
    assert mine.status_code == theirs.status_code, (mine.text[:300], theirs.text[:300])
    assert mine.status_code in (400, 413, 422)
    answer = mine.json()
    assert set(answer) == DOCUMENTED_FIELDS and answer["success"] is False and answer["errors"]


def test_a_50mb_body_is_refused_early_without_growing_the_daemon(setup):
    agent, _, url = setup
    before = agent.rss_kib()
    sock = socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    sock.sendall(b"POST /v2/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (1 << 20)
    sent = 0
    answer = b""
    try:
        for _ in range(50):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    grown = agent.rss_kib() - before
    assert grown < 24 * 1024, f"RSS grew by {grown} KiB for a refused 50 MB body"


def test_token_and_full_spool_answers(tmp_path):
    agent = Agent(tmp_path / "agent", extra_config='http_token = "local-secret"').start()
    try:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", agent.http_socket_path,
                              "-d", '{"data":{"a":1},"config":{"table":"bronze.t"}}', "http://localhost/v2/stream"], capture_output=True)
        assert out.stdout == b"401"
        ok = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", agent.http_socket_path,
                             "-H", "Authorization: Bearer local-secret",
                             "-d", '{"data":{"a":1},"config":{"table":"bronze.t"}}', "http://localhost/v2/stream"], capture_output=True)
        assert ok.stdout == b"200"
        assert "local-secret" not in agent.cli("config", "check").stdout.decode()
    finally:
        agent.finish()
    full = Agent(tmp_path / "full")
    Path(full.config_path).write_text(Path(full.config_path).read_text().replace("[spool]", '[spool]\nmax_bytes = "1MiB"'))
    full.start()
    try:
        big = tmp_path / "big.json"
        big.write_text(json.dumps({"data": [{"pad": "z" * 1000}] * 300, "config": {"table": "bronze.t"}}))
        codes = []
        for _ in range(6):
            out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "--unix-socket", full.http_socket_path,
                                  "--data-binary", f"@{big}", "http://localhost/v2/stream"], capture_output=True)
            codes.append(out.stdout.decode())
        assert codes[0].startswith("HTTP/1.1 200")
        assert codes[-1].startswith("HTTP/1.1 507") and "retry-after: 5" in codes[-1].lower()
    finally:
        full.finish()


# --------------------------------------------------------------------------------------------------------------
# config.wait = true: answered once the Stream API committed the rows, with their snapshot


def wait_agent(tmp_path, emu, timeout: str = "20s", **extra) -> tuple[Agent, str]:
    port = free_port()
    agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
http_listen = "127.0.0.1:{port}"
wait_timeout = "{timeout}"
[api]
url = "{emu.stream_url}"
[batch]
linger = "50ms"
[retry]
initial = "50ms"
max = "200ms"
""").start()
    return agent, f"http://127.0.0.1:{port}/v2/stream"


def test_wait_true_is_answered_with_the_apis_snapshot_once_committed(tmp_path):
    with Emulator(quiet=True) as emu:
        agent, url = wait_agent(tmp_path, emu)
        try:
            with requests.Session() as http:
                r = http.post(url, json={"data": [{"id": i} for i in range(20)], "config": {"table": "bronze.waited", "wait": True}})
                answer = r.json()
                assert r.status_code == 200 and answer["committed"] is True, answer
                assert answer["successful_rows"] == 20 and answer["rejected_rows"] == 0 and answer["success"] is True
                assert answer["snapshot_id"] is not None
                # The rows are in the lake when the answer comes, and went upstream with wait: true.
                assert rows(emu, "waited") == 20
                upstream = [q for q in emu.requests() if q["table"] == "lake.bronze.waited"]
                assert upstream and str(upstream[-1]["snapshot_id"]) == str(answer["snapshot_id"]), upstream
                # NDJSON: ?wait=true; batched with rows that do not wait.
                plain = http.post(url, json={"data": [{"id": 100}], "config": {"table": "bronze.waited"}})
                assert plain.status_code == 200 and plain.json()["snapshot_id"] is None
                r = http.post(url + "?table=bronze.waited&wait=true", data='{"id":200}\n{"id":201}\n',
                              headers={"Content-Type": "application/x-ndjson"})
                assert r.status_code == 200 and r.json()["committed"] is True and r.json()["successful_rows"] == 2, r.json()
            wait_until(lambda: rows(emu, "waited") == 23)
        finally:
            agent.finish()


@pytest.mark.parametrize("named", [True, False])
def test_wait_true_reports_rows_the_api_refused(tmp_path, named):
    """Unnamed (an append answered 200 with 1 of 3 rejected, not saying which): the rows are one dead letter
    marked partial, and the answer said `successful_rows: 0, rejected_rows: 3` with no snapshot, where the
    API had written 2: a client trusting it would have sent those 2 again."""
    with Emulator(quiet=True) as emu:
        emu.control(reject_marker="bad", reject_marker_mode="row", name_rejected_rows=named)
        agent, url = wait_agent(tmp_path, emu)
        try:
            r = requests.post(url, json={"data": [{"id": 1}, {"id": 2, "bad": 1}, {"id": 3}],
                                         "config": {"table": "bronze.waited_bad", "wait": True}})
            answer = r.json()
            assert r.status_code == 200 and answer["committed"] is True, answer
            assert answer["successful_rows"] == 2 and answer["rejected_rows"] == 1, answer
            assert answer["success"] is True and answer["snapshot_id"] is not None, answer
            assert rows(emu, "waited_bad") == 2
            if named:
                assert any("reject marker" in e for e in answer["errors"]), answer
            else:
                assert any(e.startswith("partially rejected: 1 of 3 rows") for e in answer["errors"]), answer
        finally:
            agent.finish()


def test_wait_true_says_plainly_when_the_api_did_not_commit_in_time_and_the_rows_still_go(tmp_path):
    with Emulator(quiet=True) as emu:
        emu.control(error_rate=1.0)
        agent, url = wait_agent(tmp_path, emu, timeout="1s")
        try:
            r = requests.post(url, json={"data": [{"id": 1}], "config": {"table": "bronze.waited_late", "wait": True}}, timeout=10)
            answer = r.json()
            assert r.status_code == 202 and answer["committed"] is False and answer["snapshot_id"] is None, answer
            assert "not yet committed" in answer["warnings"][0] and "wait_timeout" in answer["warnings"][0]
            assert agent.status()["pending"] == 1
            emu.control(error_rate=0.0)
            wait_until(lambda: rows(emu, "waited_late") == 1, 20)
        finally:
            agent.finish()


def test_a_request_waiting_for_the_api_is_answered_when_the_daemon_stops(tmp_path):
    import threading
    with Emulator(quiet=True) as emu:
        emu.control(error_rate=1.0)
        agent, url = wait_agent(tmp_path, emu, timeout="60s")
        answers = []
        caller = threading.Thread(target=lambda: answers.append(requests.post(
            url, json={"data": [{"id": 1}], "config": {"table": "bronze.waited_stop", "wait": True}}, timeout=30)))
        caller.start()
        wait_until(lambda: agent.status()["pending"] == 1, 10)
        assert agent.stop() == 0
        caller.join(timeout=30)
        assert answers and answers[0].status_code == 202 and answers[0].json()["committed"] is False, answers


def test_a_waiting_request_whose_body_was_still_arriving_at_the_stop_is_answered(tmp_path):
    """The stop answers the requests waiting for the API; one whose body was still arriving (or whose commit
    was in flight) only starts to wait after that answer went round. It is answered 202 at its commit, not
    left to the drain deadline and closed unanswered."""
    import signal
    import time
    with Emulator(quiet=True) as emu:
        emu.control(error_rate=1.0)
        agent, url = wait_agent(tmp_path, emu, timeout="60s")
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps({"data": [{"id": 1}], "config": {"table": "bronze.waited_body", "wait": True}}).encode()
        head = (f"POST /v2/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {emu.api_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head + body[:10])
            time.sleep(0.3)
            agent.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            started = time.monotonic()
            conn.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["committed"] is False
        assert time.monotonic() - started < 5, "answered only at the drain deadline"
        assert agent.process.wait(timeout=30) == 0


def daemon_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_answers_a_client_never_reads_do_not_pile_up_in_the_daemon(tmp_path):
    """A client pipelining requests without reading the answers: the daemon once wrote every answer into
    memory regardless (1.8 GB in 15 s from two clients). Now it stops reading such a connection until its
    answers are read, as the line protocol does; other clients are served meanwhile."""
    agent = Agent(tmp_path / "agent").start()
    try:
        rss_before = agent.rss_kib()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(agent.http_socket_path)
        client.settimeout(0.5)
        request = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
        deadline = time.monotonic() + 4
        sent = 0
        while time.monotonic() < deadline:
            try:
                sent += client.send(request)
            except (socket.timeout, BlockingIOError):
                pass  # the daemon stopped reading: what a client that does not read its answers should see
        grown_mib = (agent.rss_kib() - rss_before) / 1024
        assert grown_mib < 64, f"the daemon grew by {grown_mib:.0f} MiB for {sent / 1e6:.0f} MB of requests nobody read answers of"
        other = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", agent.http_socket_path,
                                "http://localhost/readyz"], capture_output=True, timeout=30)
        assert other.stdout == b"200"
        client.close()
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_connections_holding_every_descriptor_neither_spin_the_daemon_nor_outlast_their_release(tmp_path):
    """Connections that never send hold the daemon's descriptors. With none left, its accept was retried at
    once, forever: a core at 100 % until they went. Now the listener frees a descriptor it keeps in reserve,
    closes the connections waiting in its backlog and says so; once the held connections close, requests are
    served again."""
    agent = Agent(tmp_path / "agent").start()
    try:
        subprocess.run(["prlimit", f"--pid={agent.process.pid}", "--nofile=96:96"], check=True)
        held = []
        for _ in range(120):
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(agent.http_socket_path)  # the backlog takes what the daemon cannot accept
            held.append(connection)
        time.sleep(1)
        before = daemon_cpu_seconds(agent.process.pid)
        time.sleep(3)
        spent = daemon_cpu_seconds(agent.process.pid) - before
        assert spent < 0.5, f"the daemon used {spent:.2f} s of CPU in 3 s with its descriptors gone"
        assert "no file descriptor left (open files limit 96)" in agent.log()
        for connection in held:
            connection.close()
        served = subprocess.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
                                 agent.http_socket_path, "http://localhost/readyz"], capture_output=True, timeout=30)
        assert served.stdout == b"200"
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


@pytest.mark.parametrize("connection", ["", "Connection: close\r\n"])
def test_a_refused_writer_still_sending_its_body_reads_its_403(tmp_path, connection):
    """The 403 of a writer `allow_uids` does not allow closed the connection at once: a client that sends the
    head and then the body (Python's http.client does; urllib also says `Connection: close`) got a broken
    pipe instead of its answer, now and then."""
    agent = Agent(tmp_path / "agent", extra_config=f"allow_uids = [{os.geteuid() + 1}]").start()
    try:
        # Larger than the socket's buffers (a body the agent stopped reading would block the client), and
        # within the 10 MB a request may carry.
        body = b'{"data":[' + b",".join([b'{"a":"' + b"x" * 990 + b'"}'] * 3000) + b'],"config":{"table":"bronze.t"}}'
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(agent.http_socket_path)
        client.settimeout(10)
        client.sendall(b"POST /v2/stream HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (connection.encode(), len(body)))
        time.sleep(0.3)  # the agent has answered the head
        client.sendall(body)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        client.close()
        assert answer.startswith(b"HTTP/1.1 403 ") and b"connection: close" in answer.lower(), answer
        assert agent.status()["pending"] == 0
    finally:
        agent.finish()


def test_allow_uids_hold_on_the_http_socket_and_a_reload_reaches_open_connections(tmp_path):
    """`[intake] allow_uids` was checked on the line socket only: any local user who could open http.sock
    stored records there. And a reload of `http_token` or the lists did not reach a keep-alive connection
    already open, so a leaked token could not be revoked without a restart."""
    from http_client import UnixHTTPConnection

    body = json.dumps({"data": {"a": 1}, "config": {"table": "bronze.t"}})
    stranger = Agent(tmp_path / "stranger", extra_config=f"allow_uids = [{os.geteuid() + 1}]").start()
    try:
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", stranger.http_socket_path, "-d", body,
                              "http://localhost/v2/stream"], capture_output=True)
        answer, code = out.stdout.decode().rsplit("\n", 1)
        assert code == "403" and "is not allowed to write to this agent ([intake] allow_uids / allow_gids)" in json.loads(answer)["errors"][0], answer
        assert stranger.status()["pending"] == 0
    finally:
        stranger.finish()

    agent = Agent(tmp_path / "agent", extra_config='http_token = "old-token"').start()
    try:
        conn = UnixHTTPConnection(agent.http_socket_path, timeout=30)

        def post(token: str) -> int:
            conn.request("POST", "/v2/stream", body=body, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            return response.status

        assert post("old-token") == 200
        config = Path(agent.config_path).read_text()
        Path(agent.config_path).write_text(config.replace('http_token = "old-token"', 'http_token = "new-token"'))
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in agent.log(), 10, message="the reload")
        assert post("old-token") == 401, "the open connection still took the revoked token"
        assert post("new-token") == 200
        # The writer's own uid taken off the lists: its open connection is refused and closed.
        Path(agent.config_path).write_text(
            Path(agent.config_path).read_text().replace("[intake]", f"[intake]\nallow_uids = [{os.geteuid() + 1}]"))
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: agent.log().count("configuration reloaded") == 2, 10, message="the second reload")
        assert post("new-token") == 403
        conn.close()
        assert agent.status()["pending"] == 2
    finally:
        agent.finish()
