"""An idle daemon sleeps (issue 19): with nothing pending and nobody connected, no thread of it wakes up
periodically faster than once a second.

Wake-ups are counted as the kernel counts them: each thread's context switches
(`/proc/PID/task/*/status`), which grow only when the thread runs. What is left at idle is the delivery
loop's look at the spool every 5 s (the loop and a reader, about two switches each time). A timer firing
every second gives its thread 12 in the window, more than any thread may have; before these tests the
spool writer had one (its idle tick), libdispatch's manager thread another (its worker-pool monitor) and
the datagram thread a third (a 200 ms receive timeout, to notice a stop, and a 1 s counter flush).
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

from agent_harness import Agent, free_port, wait_until

WINDOW_SECONDS = 12
# Per thread: three looks of the delivery loop fit in the window with room to spare; a 1 s timer does not.
MAX_PER_THREAD = 9
# All threads together: the loop and its reader, ~0.7/s (7-8 switches in 12 s, release and debug builds).
MAX_PER_SECOND = 1.5


def context_switches(pid: int) -> dict[str, tuple[str, int]]:
    """Per thread id: its name and its voluntary plus involuntary context switches so far."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        count = sum(int(line.split()[1]) for line in status
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
        threads[task.name] = (name, count)
    return threads


def assert_sleeps(agent: Agent) -> None:
    """Over WINDOW_SECONDS, no thread wakes more than MAX_PER_THREAD times, all of them at most
    MAX_PER_SECOND times a second."""
    before = context_switches(agent.process.pid)
    started = time.monotonic()
    time.sleep(WINDOW_SECONDS)
    after = context_switches(agent.process.pid)
    elapsed = time.monotonic() - started
    woken = {f"{name} ({tid})": count - before.get(tid, (name, 0))[1] for tid, (name, count) in after.items()}
    report = ", ".join(f"{thread}: {count}" for thread, count in sorted(woken.items(), key=lambda kv: -kv[1]) if count)
    print(f"wake-ups in {elapsed:.1f} s at idle: {report or 'none'}")
    busiest = max(woken.values(), default=0)
    assert busiest <= MAX_PER_THREAD, f"a thread woke {busiest} times in {elapsed:.1f} s at idle: {report}"
    total = sum(woken.values()) / elapsed
    assert total <= MAX_PER_SECOND, f"{total:.2f} wake-ups/s at idle: {report}"


def test_an_idle_daemon_has_no_timer_faster_than_a_second(agent):
    time.sleep(2)  # start-up settles (the listeners, the first look at the spool)
    assert_sleeps(agent)


def test_every_listener_sleeps_too_once_its_traffic_is_counted(tmp_path):
    """The datagram socket, the TCP HTTP listener and the metrics endpoint, after a datagram: its thread
    writes the count down (within a second) and then sleeps until the next datagram. (The datagram is
    invalid: counted, rejected, and nothing is pending.)"""
    datagrams = tmp_path / "dgram.sock"
    agent = Agent(tmp_path / "agent", extra_config=f"""
datagram_socket = "{datagrams}"
http_listen = "127.0.0.1:{free_port()}"
[metrics]
listen = "{tmp_path / 'metrics.sock'}"
""").start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b'{"broken": ', str(datagrams))
        wait_until(lambda: agent.status()["datagrams"] == {"received": 1, "rejected": 1, "dropped": 0},
                   timeout=5, message="the datagram counted in the spool")
        time.sleep(1)
        assert_sleeps(agent)
    finally:
        agent.finish()


def test_under_systemd_the_status_loop_sleeps_too(tmp_path):
    """With NOTIFY_SOCKET set (Type=notify), the daemon sends STATUS= every 5 s and nothing else wakes it.
    Before: its status loop slept in a task every 2 s, which started libdispatch's worker threads; in the
    window libdispatch's manager thread woke 29 times and each of the 4 async threads 18-22 times."""
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify))
        systemd.settimeout(10)
        agent = Agent(tmp_path / "agent", env={"NOTIFY_SOCKET": str(notify)}).start()
        try:
            assert b"READY=1" in systemd.recv(4096)
            time.sleep(2)
            assert_sleeps(agent)
            assert systemd.recv(4096).startswith(b"STATUS="), "STATUS= still comes"
        finally:
            agent.finish()
