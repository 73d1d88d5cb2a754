"""The client examples in docs/clients/ (Python and Node.js, standard library only) run against the real agent:
the line protocol with acks, including a record over max_line_bytes (the agent closes the connection; the
example reconnects and sends the rest), and the local Stream API over the Unix socket and over TCP with a
token. Every daemon ends with SIGTERM and must exit 0."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
