"""The daemon's life cycle with the real binary: every listener combination starts, answers and stops with
SIGTERM and exit 0; a listener that cannot start ends the daemon promptly with its error and leaves nothing
listening; SIGTERM at any moment of start-up or of a burst of writers loses nothing acknowledged; a second
SIGTERM stops at once; socket activation without a name; READY=1 only once every listener accepts; listening
sockets close-on-exec; a slow scrape holds up no acknowledgement."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, agent_binary, free_port, spooled_records, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402
from test_systemd_protocol import NotifyReceiver  # noqa: E402

DRAIN = 2.0  # [service] drain_timeout in these tests, in seconds
O_CLOEXEC = 0o2000000


# -- helpers ------------------------------------------------------------------------------------------------------

class Listeners:
    """The listeners of one test's configuration: where each is, and how to tell it is listening."""

    def __init__(self, directory: Path, *, http_socket=True, http_listen=False, datagram=False, metrics=False,
                 metrics_path=False):
        self.directory = directory
        self.http_socket = http_socket
        self.http_port = free_port() if http_listen else None
        self.datagram_path = str(directory / "dgram.sock") if datagram else None
        self.metrics_port = free_port() if metrics and not metrics_path else None
        self.metrics_path = str(directory / "metrics.sock") if metrics_path else None

    def config(self, overrides: dict[str, str] | None = None) -> str:
        """Lines for `[intake]` and the sections after it; `overrides` replaces a listener's address."""
        overrides = overrides or {}
        lines = []
        if self.http_port:
            lines.append(f'http_listen = "{overrides.get("http_listen", f"127.0.0.1:{self.http_port}")}"')
        if self.datagram_path:
            lines.append(f'datagram_socket = "{overrides.get("datagram_socket", self.datagram_path)}"')
        lines.append(f'[service]\ndrain_timeout = "{DRAIN:g}s"')
        if self.metrics_port or self.metrics_path:
            default = self.metrics_path or f"127.0.0.1:{self.metrics_port}"
            lines.append(f'[metrics]\nlisten = "{overrides.get("metrics", default)}"')
        return "\n".join(lines) + "\n"

    def agent(self, overrides: dict[str, str] | None = None, **kwargs) -> Agent:
        agent = Agent(self.directory, http_socket=self.http_socket, extra_config=self.config(overrides), **kwargs)
        for key, value in (overrides or {}).items():
            if key in ("socket", "http_socket"):
                text = Path(agent.config_path).read_text()
                old = agent.socket_path if key == "socket" else agent.http_socket_path
                Path(agent.config_path).write_text(text.replace(f'{key} = "{old}"', f'{key} = "{value}"'))
        return agent

    def paths(self, agent: Agent) -> list[str]:
        return [p for p in (agent.socket_path, agent.http_socket_path, self.datagram_path, self.metrics_path) if p]

    def ports(self) -> list[int]:
        return [p for p in (self.http_port, self.metrics_port) if p]


def answering_path(path: str, kind=socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


def answering_port(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_exit(process: subprocess.Popen, within: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"still running {within}s later")
    return code, time.monotonic() - started


def http_post(agent: Agent, listeners: Listeners, rows: list[dict]) -> list[int]:
    """POSTs `rows` to every local Stream API listener; returns the status codes."""
    body = json.dumps({"data": rows, "config": {"table": "bronze.http"}})
    codes = []
    if listeners.http_socket:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", agent.http_socket_path,
                              "-H", "Content-Type: application/json", "-d", body, "http://localhost/v2/stream"],
                             capture_output=True, timeout=30)
        codes.append(int(out.stdout or b"0"))
    if listeners.http_port:
        codes.append(requests.post(f"http://127.0.0.1:{listeners.http_port}/v2/stream", data=body,
                                   headers={"Content-Type": "application/json"}, timeout=30).status_code)
    return codes


# -- every combination starts, answers and stops ------------------------------------------------------------------

COMBINATIONS = {
    "line only": dict(http_socket=False),
    "line + http socket": dict(),
    "line + http_listen": dict(http_socket=False, http_listen=True),
    "line + http socket + http_listen": dict(http_listen=True),
    "line + datagram": dict(http_socket=False, datagram=True),
    "line + metrics": dict(http_socket=False, metrics=True),
    "all": dict(http_listen=True, datagram=True, metrics=True),
}


@pytest.mark.parametrize("combination", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_every_listener_combination_starts_answers_and_stops_with_exit_0(tmp_path, combination):
    listeners = Listeners(tmp_path / "agent", **combination)
    agent = listeners.agent().start()
    try:
        with agent.connect() as conn:
            assert conn.request('{"n":1,"ack":"line"}') == {"ack": "line", "ok": True, "accepted": 1}
        assert all(code == 200 for code in http_post(agent, listeners, [{"n": 2}]))
        if listeners.datagram_path:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.sendto(b'{"n":3}', listeners.datagram_path)
            wait_until(lambda: any(r.get("n") == 3 for r in agent.spooled_records()), 10, message="the datagram is spooled")
        if listeners.metrics_port:
            assert requests.get(f"http://127.0.0.1:{listeners.metrics_port}/metrics", timeout=10).status_code == 200
    except BaseException:
        agent.kill9()
        raise
    agent.stop_and_assert_clean(within=DRAIN + 2)
    assert "stopped cleanly" in agent.log()
    for path in listeners.paths(agent):
        assert not os.path.exists(path), f"{path} left behind"
    for port in listeners.ports():
        assert not answering_port(port), f"port {port} still listening"
    if listeners.datagram_path:
        assert agent.status()["datagrams"]["received"] == 1


def test_sigterm_with_http_clients_in_the_middle_of_a_request_head_exits_0(tmp_path):
    """A metrics scrape or local Stream API request whose head has not all arrived when the stop begins (a slow
    client, a keep-alive client's next request): NIO's protocol error handler answered the cut-off head after
    the connection had finished quiescing, and the debug build stopped with SIGILL ("Wrote in quiescing
    completed state"), every time."""
    listeners = Listeners(tmp_path / "agent", http_listen=True, metrics=True)
    agent = listeners.agent().start()
    clients = []
    try:
        for port, head in ((listeners.metrics_port, b"GE"), (listeners.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "),
                           (listeners.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /hea")):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(head)
            clients.append(client)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.connect(agent.http_socket_path)
        unix.sendall(b"POST /v2/stream HTTP/1.1\r\nHo")
        clients.append(unix)
        time.sleep(0.3)  # the agent has read them
        agent.stop_and_assert_clean(within=DRAIN + 2)
        assert "crashed" not in agent.log(), agent.log()[-2000:]
    finally:
        for client in clients:
            client.close()


def test_at_sigterm_every_listener_stops_accepting_at_once_while_open_connections_drain(tmp_path):
    """The stop signalled listeners one at a time, in reverse start order, each draining in its turn: with a
    slow client on the local Stream API address, the intake socket went on accepting and acknowledging new
    writers until the drain deadline (the log said "no new connections"), and the listeners after it got no
    drain time at all. Now every listener stops accepting as the stop begins, and all drain together."""
    listeners = Listeners(tmp_path / "agent", http_listen=True, metrics=True)
    agent = listeners.agent().start()
    slow = socket.create_connection(("127.0.0.1", listeners.http_port), timeout=10)
    try:
        slow.sendall(b"POST /v2/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        time.sleep(0.3)
        with agent.connect() as early:  # a writer connected before the stop, mid-conversation
            assert early.request('{"n":1,"ack":"before"}')["ok"]
            started = time.monotonic()
            agent.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "SIGTERM: stopping" in agent.log_since_start(), 5, message="the stop began")
            time.sleep(0.3)
            # A new writer is not taken: the intake socket no longer accepts.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
                late.settimeout(5)
                try:
                    late.connect(agent.socket_path)
                    late.sendall(b'{"n":2,"ack":"late"}\n')
                    answer = late.recv(4096)
                except OSError:
                    answer = b""
            assert b'"ok":true' not in answer, f"a writer that connected after SIGTERM was acknowledged: {answer!r}"
        code, _ = wait_exit(agent.process, within=DRAIN + 3)
        assert code == 0, agent.log_since_start()
        assert time.monotonic() - started < DRAIN + 2
    finally:
        slow.close()
    assert [r.get("n") for r in agent.spooled_records()] == [1]


def test_a_second_daemon_on_the_same_spool_exits_71_before_touching_it(tmp_path):
    """A stray second `run` on the same configuration resumed the running daemon's open batches and sent them
    (the API got them twice, or they were recorded delivered under the running daemon's feet) before it failed
    on the intake socket. The spool's lock file keeps it off, naming the daemon that holds it."""
    agent = Agent(tmp_path / "agent").start()
    try:
        second = subprocess.run([agent_binary(), "run", "--config", agent.config_path], capture_output=True, text=True,
                                env=agent.env, timeout=30)
        assert second.returncode == 71, second
        assert f"another definite-agent (pid {agent.process.pid}) runs on this spool" in second.stderr, second.stderr
        assert "spool open" not in second.stderr and "resuming" not in second.stderr, second.stderr
        with agent.connect() as conn:
            assert conn.request('{"n":1,"ack":"still"}')["ok"], "the running daemon was disturbed"
    finally:
        agent.stop_and_assert_clean(within=DRAIN + 10)
    # Once it stopped, the next one starts.
    Agent(tmp_path / "agent").start().stop_and_assert_clean(within=DRAIN + 10)


def test_sigterm_while_the_spool_is_locked_at_start_up_exits_0_promptly(tmp_path):
    """An sqlite3 shell holding the spool in a transaction makes the start-up wait (SQLite's 10 s busy
    timeout). A SIGTERM then was only recorded: the daemon waited the lock out and exited 65. The step in
    progress is now left behind after a moment, and the daemon exits 0 (nothing was acknowledged yet)."""
    import sqlite3

    agent = Agent(tmp_path / "agent")
    agent.start()
    assert agent.stop() == 0
    holder = sqlite3.connect(agent.spool_path, timeout=10, isolation_level=None)
    # In WAL mode only the exclusive locking mode keeps other connections from even reading.
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    try:
        process = agent.spawn()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        code, took = wait_exit(process, within=5)
        assert code == 0, agent.log_since_start()
        assert took < 3, f"took {took:.1f} s"
        assert "stopped during start-up" in agent.log_since_start()
    finally:
        holder.close()
    # The spool is whole: the next start takes it.
    agent.start()
    assert agent.stop() == 0


# -- a listener that cannot start ---------------------------------------------------------------------------------

def hold_stream(path: str) -> socket.socket:
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(path)
    held.listen()
    return held


def hold_datagram(path: str) -> socket.socket:
    held = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    held.bind(path)
    return held


def hold_port(port: int) -> socket.socket:
    held = socket.socket()
    held.bind(("127.0.0.1", port))
    held.listen()
    return held


def blocked_directory(tmp_path: Path) -> str:
    """A directory that cannot be created: its parent is a regular file."""
    plain = tmp_path / "plain-file"
    plain.write_text("")
    return str(plain / "sub")


# (id, the override, how to make it unbindable, the words the error must contain)
UNBINDABLE = [
    ("intake socket busy", "socket", "busy_stream", "another process is listening on it"),
    ("intake socket directory", "socket", "directory", "cannot create its directory"),
    ("http socket busy", "http_socket", "busy_stream", "another process is listening on it"),
    ("http socket directory", "http_socket", "directory", "cannot create its directory"),
    ("http_listen port busy", "http_listen", "busy_port", "is in use: Address already in use"),
    ("datagram socket busy", "datagram_socket", "busy_datagram", "another process is listening on it"),
    ("datagram socket directory", "datagram_socket", "directory", "cannot create its directory"),
    ("metrics port busy", "metrics", "busy_port", "is in use: Address already in use"),
    ("metrics socket directory", "metrics_path", "directory", "cannot create its directory"),
]
PART_NAMES = {"socket": "intake socket", "http_socket": "local Stream API socket", "http_listen": "local Stream API address",
              "datagram_socket": "datagram socket", "metrics": "metrics endpoint", "metrics_path": "metrics endpoint"}


@pytest.mark.parametrize("case", UNBINDABLE, ids=[c[0] for c in UNBINDABLE])
def test_a_listener_that_cannot_start_ends_the_daemon_with_its_error_within_5s(tmp_path, case):
    _, key, how, words = case
    listeners = Listeners(tmp_path / "agent", http_listen=True, datagram=True, metrics=True, metrics_path=key == "metrics_path")
    receiver = NotifyReceiver(str(tmp_path / "notify.sock"))
    held = None
    if how == "directory":
        where = blocked_directory(tmp_path) + ("/x.sock" if key != "metrics_path" else "/metrics.sock")
    elif how == "busy_port":
        port = listeners.http_port if key == "http_listen" else listeners.metrics_port
        where = f"127.0.0.1:{port}"
        held = hold_port(port)
    else:
        where = str(tmp_path / "agent" / "held.sock")
        (tmp_path / "agent").mkdir(parents=True, exist_ok=True)
        held = hold_datagram(where) if how == "busy_datagram" else hold_stream(where)
    agent = listeners.agent({"metrics" if key == "metrics_path" else key: where}, env={"NOTIFY_SOCKET": receiver.address})
    try:
        process = agent.spawn()
        code, took = wait_exit(process, within=5)
        log = agent.log()
        assert code == 71, (code, log)
        assert f"cannot start the {PART_NAMES[key]} {where}" in log and words in log, log
        assert not receiver.times("READY=1"), "READY=1 for a daemon that failed to start"
        # Nothing is left listening, and the path or port that was in the way still belongs to its owner.
        for path in listeners.paths(agent) + [p for p in (listeners.metrics_path,) if p]:
            if path != where:
                assert not answering_path(path) and not answering_path(path, socket.SOCK_DGRAM), f"{path} still answers"
        for port in listeners.ports():
            if f"127.0.0.1:{port}" != where:
                assert not answering_port(port), f"port {port} still listening"
        if held is not None and how != "busy_port":
            assert answering_path(where, socket.SOCK_DGRAM if how == "busy_datagram" else socket.SOCK_STREAM)
        print(f"{case[0]}: exit {code} after {took:.2f}s")
    finally:
        agent.kill9()
        receiver.stop()
        if held is not None:
            held.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as nobody")
def test_a_user_who_cannot_create_the_http_socket_gets_its_error(tmp_path):
    """As a service user who may not write /run/definite-agent (the HTTP socket's directory there)."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="lifecycle-user-"))  # pytest's own tmp is 0700 root
    try:
        os.chmod(base, 0o755)
        (base / "run").mkdir(mode=0o755)
        (base / "agent").mkdir()
        os.chown(base / "agent", 65534, 65534)
        agent = Agent(base / "agent")
        text = Path(agent.config_path).read_text().replace(agent.http_socket_path, str(base / "run" / "http.sock"))
        Path(agent.config_path).write_text(text)
        os.chmod(agent.config_path, 0o644)
        agent.command_prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        code, took = wait_exit(agent.spawn(), within=5)
        log = agent.log()
        assert code == 71, log
        assert f"cannot start the local Stream API socket {base}/run/http.sock: cannot bind it: Permission denied" in log, log
        assert not answering_path(agent.socket_path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- SIGTERM at random moments ------------------------------------------------------------------------------------

def signals_taken(pid: int) -> bool:
    """Whether the process catches SIGTERM: from then on it is the daemon's code, not the loader's, that
    runs (before that, any process dies of SIGTERM)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except FileNotFoundError:
        pass
    return False


class BurstWriter(threading.Thread):
    """Pipelines acknowledged records at the intake socket, reconnecting whenever it can; remembers every
    record acknowledged."""

    def __init__(self, path: str, prefix: str):
        super().__init__(daemon=True)
        self.path, self.prefix = path, prefix
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.sequence = 0

    def run(self):
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.settimeout(10)
                    conn.connect(self.path)
                    reader = conn.makefile("rb")
                    while not self.stop.is_set():
                        ids = [f"{self.prefix}-{self.sequence + k}" for k in range(50)]
                        self.sequence += 50
                        conn.sendall(b"".join(json.dumps({"id": i, "ack": i}).encode() + b"\n" for i in ids))
                        for _ in ids:
                            line = reader.readline()
                            if not line:
                                raise ConnectionError("closed")
                            reply = json.loads(line)
                            if reply.get("ok"):
                                self.acked.append(reply["ack"])
            except (OSError, ConnectionError, ValueError):
                time.sleep(0.01)


def test_sigterm_at_twenty_random_moments_of_start_up_and_of_a_burst_of_writers_loses_nothing_acknowledged(tmp_path):
    listeners = Listeners(tmp_path / "agent", http_listen=True, datagram=True, metrics=True)
    agent = listeners.agent()
    rng = random.Random(int(os.environ.get("SIGTERM_SEED", time.time_ns())))
    # How long start-up takes here (from the daemon taking its signals to ready), to draw moments within it.
    process = agent.spawn()
    wait_until(lambda: signals_taken(process.pid), 10, interval=0.001, message="the daemon takes its signals")
    taken = time.monotonic()
    wait_until(lambda: Agent.READY_LINE in agent.log_since_start(), 15, interval=0.001, message="ready")
    startup = max(time.monotonic() - taken, 0.02)
    agent.stop_and_assert_clean(within=DRAIN + 2)
    acked: list[str] = []
    outcomes = []
    for moment in range(20):
        during_start_up = moment % 2 == 0
        writers = [BurstWriter(agent.socket_path, f"m{moment}w{w}") for w in range(4)]
        for writer in writers:
            writer.start()
        process = agent.spawn()
        wait_until(lambda: signals_taken(process.pid) or process.poll() is not None, 10, interval=0.001,
                   message="the daemon takes its signals")
        if during_start_up:
            delay = rng.uniform(0, startup)
        else:
            wait_until(lambda: Agent.READY_LINE in agent.log_since_start(), 15, message="ready")
            delay = rng.uniform(0, 0.5)
        time.sleep(delay)
        ready = Agent.READY_LINE in agent.log_since_start()
        process.send_signal(signal.SIGTERM)
        code, took = wait_exit(process, within=DRAIN + 2)
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(timeout=30)
            acked.extend(writer.acked)
        outcomes.append((round(delay, 3), ready, code, round(took, 2), sum(len(w.acked) for w in writers)))
        assert code == 0, f"moment {moment} ({delay:.3f}s, ready: {ready}): exit {code}\n{agent.log_since_start()}"
    print(f"start-up {startup:.3f}s; moments (delay s, ready, exit, stop s, acked):", outcomes)
    assert any(not ready for _, ready, *_ in outcomes), "no SIGTERM landed during start-up"
    assert any(n > 0 for *_, n in outcomes), "no record was acknowledged: the burst never ran"
    stored = {r["id"] for r in spooled_records(agent.spool_path)}
    missing = [a for a in acked if a not in stored]
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:5]}"


# -- a second SIGTERM ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("second_signal", [False, True])
def test_connections_still_open_at_the_end_of_the_stop_close_before_the_event_loops(tmp_path, second_signal):
    """A request body or a line half sent when the drain ends (or a second SIGTERM stops at once): the
    connections were closed by the event loops' shutdown, each telling the quiescing helper on the server
    channel's loop, which had often shut down first: "ERROR: Cannot schedule tasks on an EventLoop that has
    already shut down", a crash in SwiftNIO's strict mode (4 runs in 6 with a datagram socket configured)."""
    for attempt in range(4):
        agent = Agent(tmp_path / f"agent{attempt}", extra_config=f'datagram_socket = "{tmp_path}/agent{attempt}/dgram.sock"\n'
                      '[service]\ndrain_timeout = "2s"\n').start()
        clients = []
        try:
            # Two of each: whichever loop the round robin gives the next connection, some land on a loop
            # other than their listener's.
            for _ in range(2):
                line = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                line.connect(agent.socket_path)
                line.sendall(b'{"half":1')
                body = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                body.connect(agent.http_socket_path)
                body.sendall(b"POST /v2/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"da")
                clients += [line, body]
            time.sleep(0.5)
            agent.process.send_signal(signal.SIGTERM)
            if second_signal:
                time.sleep(0.002)
                agent.process.send_signal(signal.SIGTERM)
            code, _ = wait_exit(agent.process, within=10)
            assert code == 0, agent.log()[-3000:]
            assert "EventLoop" not in agent.log(), agent.log()[-3000:]
        finally:
            for client in clients:
                client.close()
            agent.kill9()


def test_a_stop_while_another_process_reads_the_spool_is_prompt_and_says_the_wal_waits(tmp_path):
    """An `sqlite3` shell (or a backup) holding a read transaction on the spool held the writer's last
    checkpoint for its 10 s busy timeout: an idle stop took the whole drain bound, and the log said only
    "stopped cleanly"."""
    import sqlite3

    agent = Agent(tmp_path / "agent").start()
    with agent.connect() as conn:
        assert conn.request('{"x":1,"ack":"a"}')["ok"]
    reader = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM segments").fetchone()
        # Written after the reader's snapshot: no checkpoint may copy it while the reader holds it.
        with agent.connect() as conn:
            assert conn.request('{"x":2,"ack":"b"}')["ok"]
        agent.process.send_signal(signal.SIGTERM)
        code, took = wait_exit(agent.process, within=15)
        assert code == 0 and took < 3, (code, took, agent.log()[-2000:])
        assert "the spool's WAL was not copied into the spool file at the stop: another process reads the spool" in agent.log()
    finally:
        reader.close()
    assert agent.status()["pending"] == 2


def test_a_second_signal_during_the_drain_stops_at_once_and_loses_nothing(tmp_path):
    with Emulator() as emu:
        emu.control(latency_ms=20_000)
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
[api]
url = "{emu.stream_url}"
timeout = "60s"
[batch]
linger = "50ms"
[service]
drain_timeout = "30s"
""").start()
        try:
            with agent.connect() as conn:
                reply = conn.request(json.dumps({"config": {"table": "bronze.slow"}, "data": [{"i": i} for i in range(50)], "ack": "a"}))
                assert reply["ok"], reply
            time.sleep(0.5)  # the batch is in flight, held by the emulator's latency
            agent.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert agent.process.poll() is None, "the first SIGTERM waits for the request in flight"
            agent.process.send_signal(signal.SIGINT)  # SIGINT counts as SIGTERM does
            code, took = wait_exit(agent.process, within=5)
            assert code == 0 and took < 3, (code, took)
            assert "SIGINT during the stop: stopping at once" in agent.log()
        finally:
            agent.kill9()
        assert agent.status()["pending"] == 50, "the unconfirmed batch stays in the spool"


# -- socket activation --------------------------------------------------------------------------------------------

needs_activate = pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")


@needs_activate
def test_a_single_passed_socket_without_a_name_is_the_intake_socket_with_the_http_intake_on(tmp_path):
    agent = Agent(tmp_path / "agent")  # http_socket on, as by default
    launcher = subprocess.Popen(["systemd-socket-activate", "-l", agent.socket_path,
                                 agent_binary(), "run", "--config", agent.config_path],
                                stdout=open(agent.log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: os.path.exists(agent.socket_path), 10, message="systemd-socket-activate listens")
        with agent.connect() as conn:  # the first connection starts the daemon
            conn.send("".join(json.dumps({"i": i, "ack": str(i)}) + "\n" for i in range(500)).encode())
            replies = [conn.reply() for _ in range(500)]
        assert all(r and r["ok"] for r in replies), replies[:3]
        wait_until(lambda: Agent.READY_LINE in agent.log(), 10, message="ready")
        assert "passed by systemd" in agent.log()
        assert "another process" not in agent.log()
        assert [r["i"] for r in agent.spooled_records()] == list(range(500))
        launcher.send_signal(signal.SIGTERM)
        code, _ = wait_exit(launcher, within=DRAIN + 10)
        assert code == 0, agent.log()
        assert os.path.exists(agent.socket_path), "the passed socket's path is not the daemon's to remove"
        assert not os.path.exists(agent.http_socket_path)
    finally:
        if launcher.poll() is None:
            launcher.kill()


LAUNCHER = """
import os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
for index, fd in enumerate(fds):  # out of the way first: the fds may already be 3, 4, ...
    os.dup2(fd, 100 + index)
for fd in fds:
    os.close(fd)
for index in range(len(fds)):
    os.dup2(100 + index, 3 + index)
    os.close(100 + index)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.argv[3], sys.argv[3:])
"""


def launch_with_passed_sockets(agent: Agent, sockets: list[socket.socket], names: str) -> subprocess.Popen:
    """Runs the daemon with `sockets` passed as systemd passes them (descriptors from 3, LISTEN_PID,
    LISTEN_FDS, LISTEN_FDNAMES), while this process keeps its own copies, as a socket unit does."""
    fds = [s.fileno() for s in sockets]
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), names,
                             agent_binary(), "run", "--config", agent.config_path],
                            pass_fds=fds, stdout=open(agent.log_path, "ab"), stderr=subprocess.STDOUT)


def test_a_path_held_by_a_passed_socket_the_daemon_does_not_use_is_named_as_such(tmp_path):
    agent = Agent(tmp_path / "agent")
    # Two sockets: the intake one, and one named "spare" on the HTTP socket's path (held on by the "socket
    # unit", this test, after the daemon closes its copy).
    intake, spare = hold_stream(agent.socket_path), hold_stream(agent.http_socket_path)
    try:
        launcher = launch_with_passed_sockets(agent, [intake, spare], "intake:spare")
        code, _ = wait_exit(launcher, within=10)
        log = agent.log()
        assert code == 71, log
        assert f"cannot start the local Stream API socket {agent.http_socket_path}" in log
        assert 'held by a socket systemd passed to this process (fd 4 named "spare"' in log, log
        assert "a socket systemd passed is not used" in log
    finally:
        intake.close()
        spare.close()


def test_several_passed_sockets_are_told_apart_by_name(tmp_path):
    listeners = Listeners(tmp_path / "agent", datagram=True)
    agent = listeners.agent()
    passed = [hold_datagram(listeners.datagram_path), hold_stream(agent.http_socket_path), hold_stream(agent.socket_path)]
    try:
        launcher = launch_with_passed_sockets(agent, passed, "datagram:http:intake")
        wait_until(lambda: Agent.READY_LINE in agent.log() or launcher.poll() is not None, 15, message="ready")
        with agent.connect() as conn:
            assert conn.request('{"n":1,"ack":"a"}')["ok"]
        agent.process = launcher
        assert http_post(agent, listeners, [{"n": 2}]) == [200]
        log = agent.log()
        assert log.count("passed by systemd") == 3, log
        agent.stop_and_assert_clean(within=DRAIN + 2)
        assert all(os.path.exists(p) for p in (agent.socket_path, agent.http_socket_path, listeners.datagram_path)), \
            "passed sockets' paths are not the daemon's to remove"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for held in passed:
            held.close()


# -- readiness, descriptors, event loops --------------------------------------------------------------------------

def test_ready_comes_once_every_listener_accepts_and_listening_sockets_are_close_on_exec(tmp_path):
    receiver = NotifyReceiver(str(tmp_path / "notify.sock"))
    listeners = Listeners(tmp_path / "agent", http_listen=True, datagram=True, metrics=True)
    agent = listeners.agent(env={"NOTIFY_SOCKET": receiver.address})
    try:
        process = agent.spawn()
        receiver.wait_for("READY=1")
        # At READY=1 every listener accepts.
        assert all(answering_path(p) for p in (agent.socket_path, agent.http_socket_path))
        assert answering_path(listeners.datagram_path, socket.SOCK_DGRAM)
        assert all(answering_port(p) for p in listeners.ports())
        log = agent.log()
        assert log.count("msg=listening") == 5 and log.rindex("msg=listening") < log.index("told systemd we are ready"), log
        # Every listening socket is close-on-exec: a child process would not inherit it.
        listening = listening_inodes()
        found = 0
        for fd in os.listdir(f"/proc/{process.pid}/fd"):
            target = os.readlink(f"/proc/{process.pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in listening:
                found += 1
                with open(f"/proc/{process.pid}/fdinfo/{fd}") as info:
                    flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
                assert flags & O_CLOEXEC, f"fd {fd} ({target}) is not close-on-exec"
        assert found == 5, f"found {found} listening sockets"
    finally:
        agent.finish()
        receiver.stop()


def listening_inodes() -> set[str]:
    """Inodes of the listening TCP sockets and of the bound Unix sockets with a path (stream listeners and
    datagram sockets) on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    with open("/proc/net/unix") as rows:
        for row in list(rows)[1:]:
            fields = row.split()
            # Flags 00010000: accepting connections; type 0002: a datagram socket; either bound to a path.
            if len(fields) >= 8 and (fields[3] == "00010000" or fields[4] == "0002"):
                inodes.add(fields[6])
    return inodes


def test_a_slow_scrape_holds_up_no_acknowledgement(tmp_path):
    """Each scrape reads the spool; with the read made 2 s slow (a test hook), the event loops keep
    answering intake: every ack during the scrape within 50 ms."""
    listeners = Listeners(tmp_path / "agent", http_socket=False, metrics=True)
    agent = listeners.agent(durability="normal", env={"DEFINITE_AGENT_TEST_SCRAPE_DELAY_MS": "2000"}).start()
    try:
        # Connections are spread over the event loops in turn: with several, each loop has some, and one of
        # them is the scrape's.
        connections = [agent.connect() for _ in range(4)]
        scrape: dict = {}

        def scraper():
            started = time.monotonic()
            scrape["status"] = requests.get(f"http://127.0.0.1:{listeners.metrics_port}/metrics", timeout=30).status_code
            scrape["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=scraper)
        thread.start()
        time.sleep(0.2)  # the scrape is under way
        latencies = []
        until = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < until:
            for conn in connections:
                n += 1
                started = time.monotonic()
                assert conn.request(json.dumps({"n": n, "ack": str(n)}))["ok"]
                latencies.append(time.monotonic() - started)
        thread.join(timeout=30)
        for conn in connections:
            conn.close()
        assert scrape.get("status") == 200 and scrape["seconds"] >= 2, scrape
        print(f"{len(latencies)} acks during the scrape: max {max(latencies) * 1000:.1f} ms")
        assert max(latencies) < 0.050, f"an ack took {max(latencies) * 1000:.0f} ms during a slow scrape"
    finally:
        agent.finish()
