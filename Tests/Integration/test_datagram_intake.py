"""Datagram intake: one request per datagram, never answered; every datagram is delivered, or counted
as rejected or dropped."""
from __future__ import annotations

import json
import multiprocessing
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent  # noqa: E402
from harness import Emulator  # noqa: E402


def sender(path: str, worker: int, count: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(path)
    for i in range(count):
        if i % 1000 == 999:
            sock.send(b'{"broken": ')  # invalid: counted as rejected
        else:
            sock.send(json.dumps({"config": {"table": "bronze.dgram"}, "data": {"w": worker, "i": i}}).encode())
    sock.close()


def test_datagrams_from_four_processes_are_all_accounted_for(tmp_path):
    workers, per_worker = 4, 25_000
    with Emulator() as emu:
        path = str(tmp_path / "dgram.sock")
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=f"""
datagram_socket = "{path}"
[api]
url = "{emu.stream_url}"
[batch]
linger = "100ms"
""").start()
        try:
            deadline = time.monotonic() + 10
            while not Path(path).exists():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            processes = [multiprocessing.Process(target=sender, args=(path, w, per_worker)) for w in range(workers)]
            for p in processes:
                p.start()
            for p in processes:
                p.join(timeout=120)
                assert p.exitcode == 0
            sent = workers * per_worker

            def settled():
                d = agent.status()["datagrams"]
                return d["received"] == sent and agent.status()["pending"] == 0

            deadline = time.monotonic() + 60
            while not settled():
                assert time.monotonic() < deadline, agent.status()
                time.sleep(0.2)
            counts = agent.status()["datagrams"]
            delivered = emu.scalar("SELECT count(*) FROM lake.bronze.dgram")
            assert counts["rejected"] == workers * (per_worker // 1000)
            assert delivered + counts["rejected"] + counts["dropped"] == sent
            assert emu.scalar("SELECT count(DISTINCT (w, i)) FROM lake.bronze.dgram") == delivered
        finally:
            agent.finish()
