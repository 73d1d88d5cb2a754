"""The client examples in docs/clients/ (Python and Node.js, standard library only) run against the real agent:
the line protocol with acks, including a record over max_line_bytes (the agent closes the connection; the
example reconnects and sends the rest), and the local Stream API over the Unix socket and over TCP with a
token. Every daemon ends with SIGTERM and must exit 0."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_harness import Agent, free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "docs" / "clients"
TOKEN = "example-token"


def interpreter(language: str) -> list[str]:
    if language == "python":
        return [sys.executable]
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed (scripts/install-deps installs nodejs)")
    return [node]


def example(language: str, kind: str) -> str:
    return str(CLIENTS / language / (f"{kind}_client.py" if language == "python" else f"{kind}_client.mjs"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    port = free_port()
    running = Agent(tmp_path_factory.mktemp("clients") / "agent",
                    extra_config=f'max_line_bytes = "2KiB"\nhttp_listen = "127.0.0.1:{port}"\nhttp_token = "{TOKEN}"').start()
    running.http_url = f"http://127.0.0.1:{port}"
    yield running
    assert running.stop() == 0, running.log()[-3000:]


def run(command: list[str], records: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run(command, input="".join(json.dumps(r) + "\n" for r in records).encode(),
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("language", ["python", "node"])
def test_line_client_example_reconnects_after_a_line_too_long_and_lands_every_other_record(agent, language):
    table = f"bronze.line_{language}"
    records = [{"i": i, "language": language} for i in range(60)]
    records[20]["pad"] = "x" * 4000  # over max_line_bytes: refused, and the agent closes the connection
    result = run([*interpreter(language), example(language, "line"), agent.socket_path, table], records)
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout.decode().strip() == "accepted 59, refused 1", result.stdout
    assert "line 21: 413 line_too_long" in result.stderr.decode(), result.stderr
    assert [r["i"] for r in agent.spooled_records(table)] == [i for i in range(60) if i != 20]


@pytest.mark.parametrize("language", ["python", "node"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_http_client_example_posts_over_the_unix_socket_and_over_tcp(agent, language, transport):
    table = f"bronze.http_{language}_{transport}"
    # Requests of 1,000 rows over 1 MB each: the clients put "data" before "config", which once had the whole
    # of it refused as one field over the API's 1 MB.
    records = [{"i": i, "nested": {"language": language}, "pad": "p" * 1100} for i in range(2500)]
    where = ["--unix", agent.http_socket_path] if transport == "unix" else ["--url", agent.http_url]
    where += ["--token", TOKEN]  # http_token guards the Unix socket too
    result = run([*interpreter(language), example(language, "http"), *where, "--table", table], records)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "spooled 2500 rows"
    assert agent.spooled_records(table) == records
    if transport == "tcp":
        refused = run([*interpreter(language), example(language, "http"), "--url", agent.http_url, "--token", "wrong",
                       "--table", table], records[:1])
        assert refused.returncode == 1 and "401" in refused.stderr.decode(), refused.stderr


@pytest.mark.parametrize("language", ["python", "node"])
def test_http_client_example_splits_wide_rows_by_bytes_and_names_what_is_not_json(agent, language):
    """Requests were cut by rows only: 1,000 rows of 15 KB made a 15 MB body, refused whole (413). And a
    line that is not JSON crashed the example with a traceback."""
    table = f"bronze.wide_{language}"
    records = [{"i": i, "blob": "w" * 15_000} for i in range(1500)]
    where = ["--unix", agent.http_socket_path, "--token", TOKEN]
    result = run([*interpreter(language), example(language, "http"), *where, "--table", table], records)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "spooled 1500 rows"
    assert [r["i"] for r in agent.spooled_records(table)] == list(range(1500))
    broken = subprocess.run([*interpreter(language), example(language, "http"), *where, "--table", table],
                            input=b'{"a":1}\n{"a":\n', capture_output=True, timeout=60)
    assert broken.returncode == 1 and "line 2 is not JSON" in broken.stderr.decode(), broken.stderr
    assert "Traceback" not in broken.stderr.decode()


@pytest.mark.parametrize("language", ["python", "node"])
def test_line_client_example_sends_again_what_the_agent_refused_as_busy_and_refuses_what_is_not_json(tmp_path, language):
    """503 busy (and shutting_down) store nothing: the examples counted them as refused for good, although
    the reply says to retry. A stand-in for the agent answers the first request busy and closes, as the agent
    does; the second connection is answered."""
    import socket
    import threading

    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    received: list[bytes] = []

    def serve():
        for answer_busy in (True, False):
            connection, _ = server.accept()
            with connection:
                data = b""
                while b"\n" not in data:
                    data += connection.recv(65536)
                received.append(data)
                ack = json.loads(data.split(b"\n")[0])["ack"]
                reply = ({"ack": ack, "ok": False, "status": 503, "code": "busy", "error": "nothing was stored; retry"}
                         if answer_busy else {"ack": ack, "ok": True, "accepted": 1})
                connection.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = subprocess.run([*interpreter(language), example(language, "line"), path, "bronze.t"],
                                input=b'not json\n{"i":1}\n', capture_output=True, timeout=60)
    finally:
        server.close()
    assert result.stdout.decode().strip() == "accepted 1, refused 1", (result.stdout, result.stderr)
    assert result.returncode == 1
    assert "line 1: not JSON" in result.stderr.decode() and "busy" not in result.stderr.decode(), result.stderr
    assert len(received) == 2, "the request refused busy was not sent again"


@pytest.mark.parametrize("language", ["python", "node"])
def test_line_client_example_gives_up_on_an_agent_that_hangs(tmp_path, language):
    """An agent that hangs takes a connection and neither reads nor answers. The examples give up after
    their patience (a minute by default, 2 s here) with 69 and the count not confirmed; the Python one waited
    forever in its write once the input was larger than the socket's buffers."""
    import socket

    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)  # accepted by the kernel, never read
    records = "".join(json.dumps({"i": i, "pad": "x" * 200}) + "\n" for i in range(20_000))
    try:
        started = time.monotonic()
        result = subprocess.run([*interpreter(language), example(language, "line"), "--patience", "2", path, "bronze.t"],
                                input=records.encode(), capture_output=True, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert result.returncode == 69, (result.returncode, result.stderr)
    assert "silent) for 2 s; 20000 records not confirmed" in result.stderr.decode(), result.stderr
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("language", ["python", "node"])
def test_http_client_example_carries_on_across_an_agent_restart(tmp_path, language):
    """A restart closed the connection and removed the socket for a moment: the examples stopped with
    "No such file or directory" (or ECONNRESET), without a word on what was already stored."""
    from agent_harness import wait_until

    agent = Agent(tmp_path / "agent").start()
    rows = 400_000
    process = subprocess.Popen([*interpreter(language), example(language, "http"), "--unix", agent.http_socket_path,
                                "--table", "bronze.restart"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        process.stdin.write("".join(f'{{"i":{i}}}\n' for i in range(rows)).encode())
        process.stdin.close()
        wait_until(lambda: len(agent.spooled_records()) >= 20_000, timeout=60, message="a first part spooled")
        assert agent.stop() == 0, agent.log()[-3000:]
        assert process.poll() is None, "the client ended before the restart: make the input longer"
        time.sleep(0.5)
        agent.start()
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()
        assert process.stdout.read().decode().strip().startswith("spooled ")
        assert {r["i"] for r in agent.spooled_records()} == set(range(rows))
    finally:
        if process.poll() is None:
            process.kill()
        agent.finish()
