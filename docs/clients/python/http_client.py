#!/usr/bin/env python3
"""A client of definite-agent's local Stream API (POST /v2/stream), with the standard library only: over the
agent's Unix socket, or over TCP (`[intake] http_listen`).

    python3 http_client.py --unix /run/definite-agent/http.sock --table bronze.events < records.ndjson
    python3 http_client.py --url http://127.0.0.1:8787 --token "$TOKEN" --table bronze.events < records.ndjson

Records go in gzipped JSON bodies (`{"data":[…],"config":{"table":…}}`) of up to 1,000 rows and 8 MB
(the Stream API takes 10 MB a body, counted before compression). A 200 means the rows are durable in the
agent's spool (header `X-Agent-Spooled: true`); a 507 (spool full) or 503 (busy, or stopping) is retried
after `Retry-After` (or a growing pause), and so is a connection the agent refused or closed (a restart)
for up to a minute: a request whose answer was lost may have been stored, and is stored again (at least
once). Any other error status stops with the agent's message. Prints "spooled N rows"; exits 0, or 1 with
the error and the input line to send again from (every row before it is durable).
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import socket
import sys
import time
from urllib.parse import urlsplit


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str, timeout: float = 60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class StreamClient:
    """Posts batches of rows to the local Stream API on one keep-alive connection."""

    def __init__(self, connection: http.client.HTTPConnection, token: str | None = None, patience: float = 60.0):
        self.connection = connection
        self.token = token
        self.patience = patience  # seconds of refused or lost connections before giving up

    def post(self, table: str, rows: list[dict]) -> dict:
        body = gzip.compress(json.dumps({"data": rows, "config": {"table": table}}).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        pause, deadline = 0.5, time.monotonic() + self.patience
        while True:
            try:
                self.connection.request("POST", "/v2/stream", body=body, headers=headers)
                response = self.connection.getresponse()
                answer = json.loads(response.read())
            except TimeoutError as error:
                raise RuntimeError(f"no answer within {self.connection.timeout} s; these rows may or may not be stored") from error
            except (OSError, http.client.HTTPException) as error:
                # Refused, reset or closed (the agent restarts): connect again. The next request reconnects.
                self.connection.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the agent is unreachable for {self.patience:.0f} s ({error})") from error
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if response.status == 200:
                return answer
            if response.status not in (503, 507):
                raise RuntimeError(f"{response.status}: {'; '.join(answer.get('errors') or [])}")
            # Nothing of the request was stored; the agent says when to come back.
            time.sleep(float(response.getheader("Retry-After") or pause))
            pause = min(pause * 2, 10.0)


def batches(lines: list[tuple[int, dict]], max_rows: int = 1000, max_bytes: int = 8_000_000):
    """The rows in requests of at most `max_rows` rows and about `max_bytes` of JSON; a row larger than that
    goes alone (the agent answers 413 if it is over the Stream API's limits)."""
    batch, size = [], 0
    for number, row in lines:
        row_bytes = len(json.dumps(row).encode()) + 2
        if batch and (len(batch) == max_rows or size + row_bytes > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((number, row))
        size += row_bytes
    if batch:
        yield batch


def main() -> int:
    parser = argparse.ArgumentParser(description="Post NDJSON records from stdin to definite-agent's local Stream API.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="the agent's [intake] http_socket")
    where.add_argument("--url", help="http://host:port of [intake] http_listen")
    parser.add_argument("--token", help="[intake] http_token, if set")
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    if args.unix:
        connection = UnixHTTPConnection(args.unix)
    else:
        url = urlsplit(args.url)
        connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
    client = StreamClient(connection, args.token)
    lines = []
    # utf-8-sig: a byte order mark before the first line (an editor's, on Windows) is not part of it.
    for number, line in enumerate(open(sys.stdin.fileno(), encoding="utf-8-sig", errors="replace", closefd=False), start=1):
        if not line.strip():
            continue
        try:
            lines.append((number, json.loads(line)))
        except ValueError as error:
            print(f"error: line {number} is not JSON ({error}); nothing was sent", file=sys.stderr)
            return 1
    spooled = 0
    try:
        for batch in batches(lines):
            try:
                spooled += client.post(args.table, [row for _, row in batch])["successful_rows"]
            except RuntimeError as error:
                print(f"error: {error}", file=sys.stderr)
                print(f"spooled {spooled} rows before it; send the input again from line {batch[0][0]}", file=sys.stderr)
                return 1
    finally:
        connection.close()
    print(f"spooled {spooled} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
