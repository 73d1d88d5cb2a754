#!/usr/bin/env python3
"""A client of definite-agent's local Stream API (POST /v2/stream), with the standard library only: over the
agent's Unix socket, or over TCP (`[intake] http_listen`).

    python3 http_client.py --unix /run/definite-agent/http.sock --table bronze.events < records.ndjson
    python3 http_client.py --url http://127.0.0.1:8787 --token "$TOKEN" --table bronze.events < records.ndjson

Records go in gzipped JSON bodies (`{"data":[…],"config":{"table":…}}`) of up to 1,000 rows. A 200 means
the rows are durable in the agent's spool (header `X-Agent-Spooled: true`); a 507 (spool full) or 503
(stopping) is retried after `Retry-After` (or a growing pause); any other error status stops with the
agent's message. Prints "spooled N rows"; exits 0, or 1 with the error.
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

    def __init__(self, connection: http.client.HTTPConnection, token: str | None = None):
        self.connection = connection
        self.token = token

    def post(self, table: str, rows: list[dict], attempts: int = 20) -> dict:
        body = gzip.compress(json.dumps({"data": rows, "config": {"table": table}}).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        pause = 0.5
        for _ in range(attempts):
            self.connection.request("POST", "/v2/stream", body=body, headers=headers)
            response = self.connection.getresponse()
            answer = json.loads(response.read())
            if response.status == 200:
                return answer
            if response.status not in (503, 507):
                raise RuntimeError(f"{response.status}: {'; '.join(answer.get('errors') or [])}")
            time.sleep(float(response.getheader("Retry-After") or pause))
            pause = min(pause * 2, 10.0)
        raise RuntimeError(f"the agent kept answering {response.status} ({'; '.join(answer.get('errors') or [])})")


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
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    spooled = 0
    try:
        for start in range(0, len(rows), 1000):
            spooled += client.post(args.table, rows[start:start + 1000])["successful_rows"]
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(f"spooled {spooled} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
