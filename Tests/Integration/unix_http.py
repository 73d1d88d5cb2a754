"""HTTP over a Unix stream socket with the standard library: the agent's `[intake] http_socket`."""
from __future__ import annotations

import http.client
import json
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def request(path: str, method: str, uri: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One request on its own connection: (status, the JSON body)."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request(method, uri, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
