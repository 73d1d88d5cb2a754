#!/usr/bin/env python3
"""A client of definite-agent's line protocol (its Unix stream socket), with the standard library only.

    python3 line_client.py /run/definite-agent/agent.sock bronze.events < records.ndjson
    python3 line_client.py --patience 10 SOCKET TABLE < records.ndjson    # give up after 10 s of silence

Each record goes as one request line with an ack id (its line number in the input). What a client of the
protocol must do, and this one does:

- Read the replies on a thread of their own, while writing: the agent stops reading a connection whose
  replies are not read, so a client that only writes eventually blocks.
- Match replies by ack id. A line the agent could not read an ack from (over [intake] max_line_bytes, or
  not JSON) is answered with its line number on the connection instead.
- When the connection closes (the agent closes it after a line over max_line_bytes; a restart closes it),
  connect again and send every request that has no answer yet. After a line too long, the agent read
  nothing behind it, so nothing is stored twice; after a restart, a request whose answer was lost may have
  been stored, and is stored again (at least once).
- On 507 (the agent's spool is full), 503 `busy` (it holds as much unfinished input as it keeps) or 503
  `shutting_down`, nothing of the record was stored: wait, with a growing pause, and send again.
- Give up on a connection that answers nothing, or takes nothing, for a minute (an agent that hangs; the
  `--patience`): its requests go again on a new one, and after a minute without any answer the client stops.

Prints "accepted N, refused M" and each refused record's line and reason on stderr (a line that is not
JSON is refused here, without sending it); exits 0 when every record is durable, 1 when some were refused,
69 when the agent stays unreachable (or silent) for a minute (`--patience`), saying how many records are not
confirmed.
"""
from __future__ import annotations

import argparse
import json
import queue
import socket
import sys
import threading
import time


# Refusals that store nothing and end by themselves: the record goes again after a pause.
RETRY_CODES = {"spool_full", "busy", "shutting_down"}


def must_retry(reply: dict) -> bool:
    return not reply["ok"] and (reply.get("status") == 507 or reply.get("code") in RETRY_CODES)


class LineClient:
    """Sends records to the agent's line socket until each is durable or refused."""

    def __init__(self, path: str, table: str, patience: float = 60.0):
        self.path = path
        self.table = table
        self.patience = patience  # seconds without progress before giving up

    def send(self, records: dict[str, dict]) -> tuple[int, dict[str, dict]]:
        """`records`: ack id → record, in order. Returns (records accepted, {ack id: refusal reply})."""
        pending = {ack: self._request(ack, record) for ack, record in records.items()}
        accepted, refused = 0, {}
        pause, last_progress = 0.5, time.monotonic()
        while pending:
            answers, full = self._round(list(pending.items()))
            for ack, reply in answers.items():
                if must_retry(reply):
                    continue  # nothing was stored: this one goes again after a pause
                del pending[ack]
                if reply["ok"]:
                    accepted += reply["accepted"]
                else:
                    refused[ack] = reply
            if answers:
                last_progress = time.monotonic()  # the agent answers (a full spool included): keep going
                if not full:
                    pause = 0.5
            elif time.monotonic() - last_progress > self.patience:
                raise ConnectionError(
                    f"the agent is unreachable (or silent) for {self.patience:.0f} s; {len(pending)} records not confirmed"
                    " (those already sent may be stored)")
            if pending and (full or not answers):
                time.sleep(pause)
                pause = min(pause * 2, 10.0)
        return accepted, refused

    def _request(self, ack: str, record: dict) -> bytes:
        return json.dumps({"data": record, "config": {"table": self.table}, "ack": ack}, separators=(",", ":")).encode() + b"\n"

    def _round(self, requests: list[tuple[str, bytes]]) -> tuple[dict[str, dict], bool]:
        """One connection: writes every request, reads answers until all came or the agent closed.
        Returns the answers by ack id, and whether any asked to wait (507, busy, shutting down)."""
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
        except OSError:
            return {}, False
        replies: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read, args=(sock, replies), daemon=True)
        reader.start()
        order = [ack for ack, _ in requests]
        # An agent that hangs reads nothing either: without a timeout, a write larger than the socket's
        # buffers would wait for it forever.
        sock.settimeout(self.patience)
        try:
            sock.sendall(b"".join(data for _, data in requests))
        except OSError:
            pass  # the agent closed the connection: what it answered before is still read below
        answers: dict[str, dict] = {}
        while len(answers) < len(order):
            try:
                reply = replies.get(timeout=self.patience)
            except queue.Empty:
                break  # no answer for a minute (an agent that hangs): these go again on a new connection
            if reply is None:
                break  # closed: the requests without an answer go again on a new connection
            # Without an ack the reply names the request's line on this connection (1-based).
            answers[reply["ack"] if "ack" in reply else order[reply["line"] - 1]] = reply
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv (close alone would not)
        except OSError:
            pass
        reader.join()
        sock.close()
        return answers, any(must_retry(r) for r in answers.values())

    @staticmethod
    def _read(sock: socket.socket, replies: queue.Queue) -> None:
        buffer = b""
        try:
            while chunk := sock.recv(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    replies.put(json.loads(line))
        except OSError:
            pass
        replies.put(None)


def main() -> int:
    parser = argparse.ArgumentParser(description="Send NDJSON records from stdin to definite-agent's line socket.")
    parser.add_argument("socket", help="the agent's [intake] socket")
    parser.add_argument("table", help="target table, e.g. bronze.events")
    parser.add_argument("--patience", type=float, default=60.0, metavar="SECONDS",
                        help="give up after this long without an answer (default 60)")
    args = parser.parse_args()
    records, not_json = {}, 0
    # utf-8-sig: a byte order mark before the first line (an editor's, on Windows) is not part of it.
    for n, line in enumerate(open(sys.stdin.fileno(), encoding="utf-8-sig", errors="replace", closefd=False), start=1):
        if not line.strip():
            continue
        try:
            records[str(n)] = json.loads(line)
        except ValueError as error:
            print(f"line {n}: not JSON ({error}); not sent", file=sys.stderr)
            not_json += 1
    try:
        accepted, refused = LineClient(args.socket, args.table, patience=args.patience).send(records)
    except ConnectionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 69
    for ack, reply in refused.items():
        print(f"line {ack}: {reply['status']} {reply['code']}: {reply['error']}", file=sys.stderr)
    print(f"accepted {accepted}, refused {len(refused) + not_json}")
    return 1 if refused or not_json else 0


if __name__ == "__main__":
    sys.exit(main())
