"""HTTP server of the Stream API emulator: POST /v2/stream plus test endpoints.

Stream endpoint behaviour follows shared/reference/stream-api.md; the choices
made where the reference is silent are listed in Tests/Emulator/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import random
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

from . import limits
from .lake import IDENT_RE, LAKE_ALIAS, Lake, RequestError

# ---------------------------------------------------------------------------
# Fault settings
# ---------------------------------------------------------------------------

DEFAULT_FAULTS = {
    "error_rate": 0.0,            # fraction answered 500/503 before doing anything
    "rate_limit_rate": 0.0,       # fraction answered 429 + Retry-After
    "retry_after": 1,             # seconds, sent in Retry-After on 429
    "latency_ms": 0,              # fixed added latency
    "latency_range_ms": None,     # [lo, hi] random latency (overrides latency_ms)
    "hang_rate": 0.0,             # fraction that sleep hang_seconds then close, unanswered
    "hang_seconds": 30.0,
    "drop_before_body_rate": 0.0,  # close without reading the body or answering
    "drop_after_commit_rate": 0.0,  # write the rows, then close without answering
    "reject_marker": None,        # field name: rows carrying it are rejected
    "reject_marker_mode": "row",  # "row" (rejected in a 200) or "request" (400)
    "name_rejected_rows": True,   # errors say "row N: ..."; false: the reason only (as the reference documents)
    "force": None,                # {"status": 401, "count": N}
    "null_mode": False,           # write nothing, just count (see --null)
}

RATE_KEYS = ("error_rate", "rate_limit_rate", "hang_rate", "drop_before_body_rate", "drop_after_commit_rate")


def validate_faults(cur: dict, patch: dict) -> dict:
    """Return cur updated with patch, or raise ValueError."""
    if not isinstance(patch, dict):
        raise ValueError("control body must be a JSON object")
    new = dict(cur)
    for k, v in patch.items():
        if k in ("reset", "seed"):
            continue
        if k not in DEFAULT_FAULTS:
            raise ValueError(f"unknown setting '{k}'")
        if k in RATE_KEYS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{k} must be a number in [0, 1]")
            v = float(v)
        elif k in ("retry_after", "latency_ms", "hang_seconds"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{k} must be a number >= 0")
        elif k == "latency_range_ms":
            if v is not None and not (
                isinstance(v, list) and len(v) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v)
                and v[0] <= v[1]
            ):
                raise ValueError("latency_range_ms must be [lo, hi] with 0 <= lo <= hi, or null")
        elif k == "reject_marker":
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError("reject_marker must be a field name or null")
        elif k == "reject_marker_mode":
            if v not in ("row", "request"):
                raise ValueError("reject_marker_mode must be 'row' or 'request'")
        elif k == "force":
            if v is not None:
                if not isinstance(v, dict) or not isinstance(v.get("status"), int) or isinstance(v.get("status"), bool):
                    raise ValueError('force must be {"status": <int>, "count": <int>} or null')
                if not 100 <= v["status"] <= 599:
                    raise ValueError("force.status must be an HTTP status")
                cnt = v.get("count", 1)
                if not isinstance(cnt, int) or isinstance(cnt, bool) or cnt < 0:
                    raise ValueError("force.count must be an integer >= 0")
                v = {"status": v["status"], "count": cnt}
        elif k in ("null_mode", "name_rejected_rows"):
            if not isinstance(v, bool):
                raise ValueError(f"{k} must be a boolean")
        new[k] = v
    return new


# ---------------------------------------------------------------------------
# The emulator state
# ---------------------------------------------------------------------------


class Emulator:
    def __init__(self, args):
        self.lake_dir = os.path.abspath(args.lake)
        os.makedirs(self.lake_dir, exist_ok=True)
        self.namespaces = [n for n in args.namespaces.split(",") if n]
        self.ns_lower = {n.lower() for n in self.namespaces}
        self.lake = Lake(self.lake_dir, self.namespaces, auto_create=args.auto_create)
        keys = list(args.api_key or [])
        env = os.environ.get("EMULATOR_API_KEYS", "")
        keys += [k.strip() for k in env.split(",") if k.strip()]
        self.api_keys = set(keys)
        self.quiet = args.quiet
        self.seed = args.seed
        self.rng = random.Random(args.seed)
        self.startup_faults = validate_faults(DEFAULT_FAULTS, {
            "error_rate": args.error_rate,
            "rate_limit_rate": args.rate_limit_rate,
            "retry_after": args.retry_after,
            "latency_ms": args.latency_ms,
            "latency_range_ms": args.latency_range_ms,
            "hang_rate": args.hang_rate,
            "hang_seconds": args.hang_seconds,
            "drop_before_body_rate": args.drop_before_body_rate,
            "drop_after_commit_rate": args.drop_after_commit_rate,
            "reject_marker": args.reject_marker,
            "reject_marker_mode": args.reject_marker_mode,
            "name_rejected_rows": not args.anonymous_row_errors,
            "force": args.force,
            "null_mode": args.null,
        })
        self.faults = dict(self.startup_faults)
        self.flock = threading.Lock()   # faults + rng
        self.slock = threading.Lock()   # stats
        self.rlock = threading.Lock()   # request log
        self.olock = threading.Lock()   # stdout
        self.requests_path = os.path.join(self.lake_dir, "requests.jsonl")
        self.request_log: list[dict] = []
        if os.path.exists(self.requests_path):  # keep the log of earlier runs on this lake
            with open(self.requests_path, "rb") as f:
                for line in f:
                    try:
                        self.request_log.append(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        pass
        self.reset_stats()

    # -- stats -----------------------------------------------------------------

    def reset_stats(self):
        with self.slock:
            self.stats = {
                "total_requests": 0,
                "by_status": {},
                "rows_received": 0,
                "rows_written": {},
                "rows_rejected": 0,
                "dropped_after_commit": 0,
                "dropped_before_body": 0,
                "hung": 0,
                "bytes_received": 0,
                "since": time.time(),
            }

    def count(self, status=None, rows=0, written_table=None, written=0, rejected=0, nbytes=0,
              fault=None):
        with self.slock:
            s = self.stats
            s["total_requests"] += 1
            if status is not None:
                s["by_status"][str(status)] = s["by_status"].get(str(status), 0) + 1
            s["rows_received"] += rows
            s["rows_rejected"] += rejected
            s["bytes_received"] += nbytes
            if written_table and written:
                s["rows_written"][written_table] = s["rows_written"].get(written_table, 0) + written
            if fault in ("dropped_after_commit", "dropped_before_body", "hung"):
                s[fault] += 1

    def log_request(self, entry: dict):
        line = orjson.dumps(entry) + b"\n"
        with self.rlock:
            self.request_log.append(entry)
            with open(self.requests_path, "ab") as f:
                f.write(line)

    def reset_requests(self):
        with self.rlock:
            self.request_log = []
            open(self.requests_path, "wb").close()

    def say(self, text: str):
        if self.quiet:
            return
        with self.olock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    # -- faults ------------------------------------------------------------------

    def control(self, patch: dict) -> dict:
        with self.flock:
            base = dict(self.startup_faults) if patch.get("reset") else self.faults
            self.faults = validate_faults(base, patch)
            if "seed" in patch:
                self.rng = random.Random(patch["seed"])
            elif patch.get("reset"):
                self.rng = random.Random(self.seed)
            return dict(self.faults)

    def get_faults(self) -> dict:
        with self.flock:
            return dict(self.faults)

    def decide(self) -> dict:
        """Roll the per-request fault decisions (rng used only for enabled faults)."""
        with self.flock:
            f = self.faults
            r = self.rng
            d = {"faults": dict(f)}

            def roll(rate):
                return rate > 0 and r.random() < rate

            d["drop_before_body"] = roll(f["drop_before_body_rate"])
            d["hang"] = roll(f["hang_rate"])
            lr = f["latency_range_ms"]
            d["latency_ms"] = r.uniform(lr[0], lr[1]) if lr else f["latency_ms"]
            forced = None
            if f["force"] and f["force"]["count"] > 0:
                forced = f["force"]["status"]
                f["force"] = {"status": forced, "count": f["force"]["count"] - 1}
            d["force"] = forced
            d["error"] = (503 if r.random() < 0.5 else 500) if roll(f["error_rate"]) else None
            d["rate_limit"] = roll(f["rate_limit_rate"])
            d["drop_after_commit"] = roll(f["drop_after_commit_rate"])
            return d


# ---------------------------------------------------------------------------
# Body helpers
# ---------------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    pass


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing (BodyTooLarge) as soon as it passes `limit`."""
    out = []
    total = 0
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    buf = data
    try:
        while True:
            want = limit + 1 - total
            chunk = d.decompress(buf, want)
            total += len(chunk)
            out.append(chunk)
            if total > limit:
                raise BodyTooLarge()
            if d.eof:
                rest = d.unused_data
                if rest and rest.strip(b"\x00"):
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # next gzip member
                    buf = rest
                    continue
                break
            buf = d.unconsumed_tail
            if not buf and len(chunk) < want:
                raise BadBody("truncated gzip body")
    except zlib.error as e:
        raise BadBody(f"body is not valid gzip: {e}") from None
    return b"".join(out)


def today_partition() -> list[str]:
    return [_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")]


def stream_id_for(table: str | None) -> str | None:
    if not table:
        return None
    return "st_" + hashlib.sha1(table.lower().encode()).hexdigest()[:12]


def response_body(rid, table, success=False, accepted=0, successful=0, rejected=0,
                  partitions=None, snapshot_id=None, warnings=None, errors=None) -> dict:
    """Exactly the documented response fields, in the documented order."""
    return {
        "success": success,
        "request_id": rid,
        "stream_id": stream_id_for(table),
        "table": table,
        "accepted": accepted,
        "successful_rows": successful,
        "rejected_rows": rejected,
        "partitions": partitions or [],
        "snapshot_id": snapshot_id,
        "warnings": warnings or [],
        "errors": errors or [],
    }


FORCED_MESSAGES = {
    400: "bad request (forced by emulator)",
    401: "invalid or missing API key (forced by emulator)",
    404: "table not found (forced by emulator)",
    413: "payload too large (forced by emulator)",
    422: "invalid request (forced by emulator)",
    429: "rate limited (forced by emulator)",
    500: "internal server error (forced by emulator)",
    503: "service unavailable (forced by emulator)",
}


class Config:
    __slots__ = ("table", "ns", "tname", "mode", "pk", "wait", "tags", "warnings")


KNOWN_CONFIG = {"table", "mode", "primary_key", "wait", "tags"}


def parse_table(name) -> tuple[str, str]:
    """'ns.table' or 'LAKE.ns.table' -> (ns, table)."""
    if not isinstance(name, str) or not name:
        raise RequestError(422, "config.table is required (schema.table)")
    parts = name.split(".")
    if len(parts) == 3:
        if parts[0].lower() != LAKE_ALIAS:
            raise RequestError(404, f"unknown lake '{parts[0]}' in table '{name}'")
        parts = parts[1:]
    if len(parts) != 2 or not all(IDENT_RE.match(p) for p in parts):
        raise RequestError(400, f"malformed table name '{name}': expected namespace.table "
                                f"or LAKE.namespace.table with identifiers [A-Za-z_][A-Za-z0-9_]*")
    return parts[0], parts[1]


def parse_config(cfg) -> Config:
    if cfg is None:
        raise RequestError(422, "config is required (config.table)")
    if not isinstance(cfg, dict):
        raise RequestError(422, "config must be an object")
    c = Config()
    c.warnings = [f"unknown config key '{k}' ignored" for k in cfg if k not in KNOWN_CONFIG]
    c.ns, c.tname = parse_table(cfg.get("table"))
    c.mode = cfg.get("mode", "append")
    if c.mode is None:
        c.mode = "append"
    if c.mode not in ("append", "merge"):
        raise RequestError(422, f"unknown mode {c.mode!r}: expected 'append' or 'merge'")
    pk = cfg.get("primary_key")
    c.pk = None
    if c.mode == "merge":
        if pk is None:
            raise RequestError(422, 'mode="merge" requires primary_key')
        if not isinstance(pk, list) or len(pk) != 1 or not isinstance(pk[0], str) or not pk[0]:
            raise RequestError(422, "primary_key must be a list of exactly one column name "
                                    "(composite keys are not supported)")
        c.pk = pk[0]
    elif pk is not None:
        c.warnings.append("primary_key ignored in append mode")
    wait = cfg.get("wait", False)
    if wait is None:
        wait = False
    if not isinstance(wait, bool):
        raise RequestError(422, "config.wait must be a boolean")
    c.wait = wait
    tags = cfg.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise RequestError(422, "config.tags must be an object")
    c.tags = tags
    c.table = f"{LAKE_ALIAS}.{c.ns}.{c.tname}"
    return c


def config_from_query(query: str) -> dict:
    """NDJSON bodies carry config in query parameters (see README)."""
    q = parse_qs(query, keep_blank_values=True)
    cfg: dict = {}
    if "table" in q:
        cfg["table"] = q["table"][-1]
    if "mode" in q:
        cfg["mode"] = q["mode"][-1]
    if "primary_key" in q:
        vals = []
        for v in q["primary_key"]:
            if v.startswith("["):
                try:
                    j = orjson.loads(v)
                except orjson.JSONDecodeError:
                    raise RequestError(422, "primary_key is not valid JSON") from None
                vals.extend(j if isinstance(j, list) else [j])
            else:
                vals.extend(p for p in v.split(","))
        cfg["primary_key"] = vals
    if "wait" in q:
        w = q["wait"][-1].lower()
        if w in ("true", "1", "yes"):
            cfg["wait"] = True
        elif w in ("false", "0", "no", ""):
            cfg["wait"] = False
        else:
            raise RequestError(422, "wait must be true or false")
    if "tags" in q:
        try:
            cfg["tags"] = orjson.loads(q["tags"][-1])
        except orjson.JSONDecodeError:
            raise RequestError(422, "tags must be a URL-encoded JSON object") from None
    for k in q:
        if k not in KNOWN_CONFIG:
            cfg[k] = q[k][-1]
    return cfg


def is_ndjson(content_type: str) -> bool:
    ct = (content_type or "").split(";")[0].strip().lower()
    return ct in ("application/x-ndjson", "application/ndjson", "application/jsonl",
                  "application/x-jsonlines", "application/jsonlines")


def ndjson_lines(body: bytes) -> list[bytes]:
    return [ln for ln in body.split(b"\n") if ln.strip()]


# ---------------------------------------------------------------------------
# HTTP handler
# ---------------------------------------------------------------------------

DRAIN_MAX = 64 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DefiniteStreamEmulator/1.0"
    sys_version = ""
    emu: Emulator = None  # set by make_server

    def log_message(self, *args):  # the emulator prints its own lines
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    # -- low-level I/O -------------------------------------------------------------

    def _send_json(self, status: int, obj, extra_headers=None):
        data = orjson.dumps(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write (no Nagle / delayed-ACK stall between them).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        try:
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self):
        """Close the connection abruptly, with no answer."""
        self.close_connection = True
        try:
            # linger 0: close() resets the connection instead of a clean FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _content_length(self) -> int | None:
        cl = self.headers.get("Content-Length")
        if cl is None:
            return None
        try:
            n = int(cl)
        except ValueError:
            raise BadBody("bad Content-Length") from None
        if n < 0:
            raise BadBody("bad Content-Length")
        return n

    def _is_chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def _read_body(self, limit: int) -> bytes:
        """Read the raw body; BodyTooLarge when it exceeds `limit` (then drained or closed)."""
        if self._is_chunked():
            parts, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BadBody("truncated chunked body")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadBody("bad chunk size") from None
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > limit:
                    self.close_connection = True
                    raise BodyTooLarge()
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise BadBody("truncated chunked body")
                parts.append(chunk)
                self.rfile.readline(3)
            return b"".join(parts)
        n = self._content_length() or 0
        if n > limit:
            self._discard(n)
            raise BodyTooLarge()
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            self.close_connection = True
            raise BadBody("truncated body")
        return data

    def _discard(self, n: int):
        if n > DRAIN_MAX:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def _discard_body(self):
        """Consume an unread body so the connection stays usable (or mark it to close)."""
        try:
            if self._is_chunked():
                self._read_body(DRAIN_MAX)
            else:
                self._discard(self._content_length() or 0)
        except (BadBody, BodyTooLarge):
            self.close_connection = True

    def _read_json_object(self):
        try:
            body = self._read_body(limits.MAX_BODY_BYTES)
            obj = orjson.loads(body) if body.strip() else {}
        except (BadBody, BodyTooLarge, orjson.JSONDecodeError) as e:
            raise RequestError(400, f"bad body: {e}") from None
        if not isinstance(obj, dict):
            raise RequestError(400, "body must be a JSON object")
        return obj

    # -- routing ------------------------------------------------------------------------

    def do_GET(self):
        path = urlsplit(self.path).path.rstrip("/")
        emu = self.emu
        if path == "/_control":
            self._send_json(200, emu.get_faults())
        elif path == "/_stats":
            with emu.slock:
                s = orjson.loads(orjson.dumps(emu.stats))
            self._send_json(200, s)
        elif path == "/_requests":
            with emu.rlock:
                data = list(emu.request_log)
            self._send_json(200, data)
        elif path == "/_health":
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {path}"})

    def do_POST(self):
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/v2/stream":
            return self.handle_stream()
        emu = self.emu
        try:
            if path == "/_control":
                obj = self._read_json_object()
                try:
                    self._send_json(200, emu.control(obj))
                except ValueError as e:
                    self._send_json(400, {"error": str(e)})
            elif path == "/_stats/reset":
                self._discard_body()
                emu.reset_stats()
                self._send_json(200, {"ok": True})
            elif path == "/_requests/reset":
                self._discard_body()
                emu.reset_requests()
                self._send_json(200, {"ok": True})
            elif path == "/_admin/create_table":
                obj = self._read_json_object()
                ns, t = parse_table(obj.get("table"))
                emu.lake.create_table(ns, t, obj.get("columns"))
                self._send_json(200, {"ok": True, "table": f"{LAKE_ALIAS}.{ns}.{t}"})
            elif path == "/_admin/drop_table":
                obj = self._read_json_object()
                ns, t = parse_table(obj.get("table"))
                dropped = emu.lake.drop_table(ns, t)
                self._send_json(200, {"ok": True, "dropped": dropped})
            elif path == "/_admin/query":
                obj = self._read_json_object()
                sql = obj.get("sql")
                if not isinstance(sql, str) or not sql.strip():
                    raise RequestError(400, "sql is required")
                try:
                    self._send_json(200, emu.lake.query(sql))
                except Exception as e:  # duckdb errors of every kind
                    self._send_json(400, {"error": str(e)})
            else:
                self._discard_body()
                self._send_json(404, {"error": f"no such endpoint: POST {path}"})
        except RequestError as e:
            self._send_json(e.status, {"error": e.message})

    # -- the Stream API ------------------------------------------------------------------

    def handle_stream(self):
        emu = self.emu
        t0 = time.perf_counter()
        rid = "req_" + secrets.token_hex(6)
        st = {"rid": rid, "table": None, "mode": None, "rows": 0, "accepted": 0, "successful": 0,
              "rejected": 0, "tags": None, "status": None, "fault": None, "snapshot_id": None,
              "nbytes": 0}

        def finish(status, body=None, headers=None, fault=None):
            st["status"] = status
            st["fault"] = fault
            if body is not None:
                self._send_json(status, body, headers)
            ms = (time.perf_counter() - t0) * 1000
            emu.count(status=status, rows=st["rows"], written_table=st["table"],
                      written=st["successful"], rejected=st["rejected"], nbytes=st["nbytes"],
                      fault=fault)
            emu.log_request({
                "request_id": rid, "ts": time.time(), "status": status, "table": st["table"],
                "mode": st["mode"], "rows": st["rows"], "accepted": st["accepted"],
                "successful_rows": st["successful"], "rejected": st["rejected"], "tags": st["tags"],
                "snapshot_id": st["snapshot_id"], "fault": fault,
                "dropped_after_commit": fault == "dropped_after_commit",
            })
            emu.say(f"{rid} table={st['table'] or '-'} mode={st['mode'] or '-'} rows={st['rows']} "
                    f"accepted={st['accepted']} written={st['successful']} rejected={st['rejected']} "
                    f"status={status if status is not None else '-'}"
                    f"{' fault=' + fault if fault else ''} ms={ms:.1f}")

        def fail(status, message, headers=None):
            body = response_body(rid, st["table"], accepted=st["accepted"], rejected=st["rejected"],
                                 errors=[message])
            finish(status, body, headers)

        d = emu.decide()
        faults = d["faults"]
        if d["drop_before_body"]:
            self._drop()
            return finish(None, fault="dropped_before_body")
        if d["hang"]:
            time.sleep(faults["hang_seconds"])
            self._drop()
            return finish(None, fault="hung")
        if d["latency_ms"]:
            time.sleep(d["latency_ms"] / 1000.0)
        retry_hdr = {"Retry-After": str(int(faults["retry_after"]))}
        if d["force"]:
            self._discard_body()
            s = d["force"]
            return fail(s, FORCED_MESSAGES.get(s, f"status {s} (forced by emulator)"),
                        retry_hdr if s == 429 else None)
        if d["error"]:
            self._discard_body()
            return fail(d["error"], FORCED_MESSAGES[d["error"]] + " [error_rate]")
        if d["rate_limit"]:
            self._discard_body()
            return fail(429, "rate limited, retry later", retry_hdr)

        # Authentication.
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if emu.api_keys and token not in emu.api_keys or (not emu.api_keys and not token):
            self._discard_body()
            return fail(401, "invalid or missing API key" if token is not None
                        else "missing Authorization: Bearer <API key> header")

        try:
            # Body: read, decompress (bounded), parse.
            enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if enc not in ("identity", "gzip", "x-gzip", ""):
                self._discard_body()
                raise RequestError(400, f"unsupported Content-Encoding '{enc}' (use gzip)")
            raw_limit = limits.MAX_BODY_BYTES if enc in ("identity", "") else \
                limits.MAX_BODY_BYTES + limits.MAX_BODY_BYTES // 100 + 1024
            try:
                raw = self._read_body(raw_limit)
            except BodyTooLarge:
                raise RequestError(413, f"payload exceeds {limits.MAX_BODY_BYTES} bytes") from None
            except BadBody as e:
                raise RequestError(400, str(e)) from None
            st["nbytes"] = len(raw)
            if enc in ("gzip", "x-gzip"):
                try:
                    body = gunzip_limited(raw, limits.MAX_BODY_BYTES)
                except BodyTooLarge:
                    raise RequestError(413, f"decompressed payload exceeds {limits.MAX_BODY_BYTES} bytes") from None
                except BadBody as e:
                    raise RequestError(400, str(e)) from None
            else:
                body = raw
            if len(body) > limits.MAX_BODY_BYTES:
                raise RequestError(413, f"payload exceeds {limits.MAX_BODY_BYTES} bytes")
            query = urlsplit(self.path).query

            if is_ndjson(self.headers.get("Content-Type")):
                cfg_raw = config_from_query(query)
                lines = ndjson_lines(body)
                st["rows"] = len(lines)
                self._pre_config(st, cfg_raw)
                if len(lines) > limits.MAX_ROWS:
                    st["accepted"] = st["rejected"] = len(lines)
                    raise RequestError(413, f"{len(lines)} rows exceed the limit of {limits.MAX_ROWS} per request")
                cfg = parse_config(cfg_raw)
                if faults["null_mode"]:
                    rows = None
                    nrows = len(lines)
                else:
                    rows = []
                    for n, ln in enumerate(lines):
                        try:
                            rows.append(orjson.loads(ln))
                        except orjson.JSONDecodeError as e:
                            st["accepted"] = st["rejected"] = len(lines)
                            raise RequestError(400, f"invalid JSON on NDJSON line {n + 1}: {e}") from None
                    nrows = len(rows)
            else:
                try:
                    doc = orjson.loads(body)
                except orjson.JSONDecodeError as e:
                    raise RequestError(400, f"invalid JSON: {e}") from None
                if not isinstance(doc, dict):
                    raise RequestError(400, "request body must be a JSON object {\"data\": ..., \"config\": {...}}")
                cfg_raw = doc.get("config")
                self._pre_config(st, cfg_raw)
                if "data" not in doc:
                    raise RequestError(422, "data is required")
                data = doc["data"]
                if isinstance(data, dict):
                    rows = [data]
                elif isinstance(data, list):
                    rows = data
                else:
                    raise RequestError(400, "data must be an object or an array of objects")
                nrows = len(rows)
                st["rows"] = nrows
                if nrows > limits.MAX_ROWS:
                    st["accepted"] = st["rejected"] = nrows
                    raise RequestError(413, f"{nrows} rows exceed the limit of {limits.MAX_ROWS} per request")
                cfg = parse_config(cfg_raw)

            st["table"], st["mode"], st["tags"] = cfg.table, cfg.mode, cfg.tags
            st["accepted"] = nrows

            if faults["null_mode"]:
                if cfg.ns.lower() not in emu.ns_lower:
                    raise RequestError(404, f"namespace '{cfg.ns}' does not exist")
                st["successful"] = nrows
                body = response_body(rid, cfg.table, success=True, accepted=nrows, successful=nrows,
                                     partitions=today_partition() if nrows else [],
                                     warnings=cfg.warnings + ["null mode: nothing written"])
                return finish(200, body)

            result = self._ingest(rows, cfg, faults, st)
        except RequestError as e:
            # Request-level failure: nothing written; every parsed row counts as rejected.
            st["accepted"] = st["rejected"] = st["rows"]
            st["successful"] = 0
            return fail(e.status, e.message)

        if d["drop_after_commit"]:
            self._drop()
            return finish(None, fault="dropped_after_commit")
        return finish(200, result)

    def _pre_config(self, st, cfg_raw):
        """Pick up table/mode/tags for logging even when the request fails later."""
        if isinstance(cfg_raw, dict):
            t = cfg_raw.get("table")
            if isinstance(t, str):
                try:
                    ns, tn = parse_table(t)
                    st["table"] = f"{LAKE_ALIAS}.{ns}.{tn}"
                except RequestError:
                    pass
            m = cfg_raw.get("mode")
            st["mode"] = m if isinstance(m, str) else "append"
            tags = cfg_raw.get("tags")
            st["tags"] = tags if isinstance(tags, dict) else None

    def _ingest(self, rows, cfg, faults, st) -> dict:
        """Row-level checks, then one DuckLake transaction. Returns the 200 body."""
        errors: list[str] = []
        candidates: list[int] = []
        marker = faults["reject_marker"]
        marker_request = faults["reject_marker_mode"] == "request"
        pk = cfg.pk
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append(f"row {i}: not a JSON object")
                continue
            if marker is not None and marker in row:
                if marker_request:
                    where = f"row {i}: " if faults["name_rejected_rows"] else "a row "
                    raise RequestError(400, f"{where}carries reject marker '{marker}'; request rejected")
                errors.append(f"row {i}: carries reject marker '{marker}'")
                continue
            why = limits.row_limit_violation(row)
            if why:
                errors.append(f"row {i}: {why}")
                continue
            if not row:
                errors.append(f"row {i}: empty object")
                continue
            seen = set()
            bad = None
            for k in row:
                if not k:
                    bad = "empty field name"
                    break
                lk = k.lower()
                if lk in seen:
                    bad = f"field names differ only in case ('{k}')"
                    break
                seen.add(lk)
            if bad:
                errors.append(f"row {i}: {bad}")
                continue
            if pk is not None:
                pv = None
                for k, v in row.items():
                    if k.lower() == pk.lower():
                        pv = v
                        break
                if pv is None:
                    errors.append(f"row {i}: primary key '{pk}' missing or null")
                    continue
            candidates.append(i)
        pre_rejected = len(errors)
        res = self.emu.lake.write(cfg.ns, cfg.tname, rows, candidates, cfg.mode, pk, cfg.wait, errors)
        errors.sort(key=lambda m: int(m[4:m.index(":")]))  # "row N: ..." in row order
        if not faults["name_rejected_rows"]:
            errors = [m.split(": ", 1)[1] for m in errors]
        written = res["written"]
        rejected = pre_rejected + res["rejected"]
        st["successful"], st["rejected"], st["snapshot_id"] = written, rejected, res["snapshot_id"]
        st["table"] = res["table"]
        nrows = len(rows)
        return response_body(
            st["rid"], res["table"],
            success=(written > 0 or nrows == 0),
            accepted=nrows, successful=written, rejected=rejected,
            partitions=today_partition() if written else [],
            snapshot_id=res["snapshot_id"], warnings=cfg.warnings, errors=errors,
        )


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def parse_listen(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Local emulator of Definite's Stream API writing into a DuckLake")
    p.add_argument("--listen", default="127.0.0.1:8765", help="host:port (port 0 = ephemeral)")
    p.add_argument("--lake", default="./.lake", help="lake directory (catalog.ducklake, data/, requests.jsonl)")
    p.add_argument("--api-key", action="append", help="accepted API key (repeatable; also env EMULATOR_API_KEYS)")
    p.add_argument("--namespaces", default="bronze", help="comma-separated namespaces created at start")
    p.add_argument("--auto-create", dest="auto_create", action="store_true", default=True,
                   help="create unknown tables on first write (default)")
    p.add_argument("--no-auto-create", dest="auto_create", action="store_false",
                   help="answer 404 for unknown tables")
    p.add_argument("--null", action="store_true", help="null mode: validate and count, write nothing")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault-decision RNG")
    p.add_argument("--quiet", action="store_true", help="no per-request lines on stdout")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--rate-limit-rate", type=float, default=0.0)
    p.add_argument("--retry-after", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--latency-range-ms", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="lo,hi")
    p.add_argument("--hang-rate", type=float, default=0.0)
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument("--drop-before-body-rate", type=float, default=0.0)
    p.add_argument("--drop-after-commit-rate", type=float, default=0.0)
    p.add_argument("--reject-marker", default=None)
    p.add_argument("--reject-marker-mode", choices=["row", "request"], default="row")
    p.add_argument("--anonymous-row-errors", action="store_true",
                   help="row errors give the reason only, not 'row N:' (the reference documents counts, not which rows)")
    p.add_argument("--force", type=lambda s: orjson.loads(s), default=None,
                   help='JSON, e.g. \'{"status": 401, "count": 3}\'')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        emu = Emulator(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not emu.api_keys:
        print("warning: no --api-key given: any non-empty bearer token is accepted", file=sys.stderr)
    host, port = parse_listen(args.listen)
    Handler.emu = emu
    ThreadingHTTPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The listen backlog is set when the server is made (socketserver calls listen() in __init__): with
    # Python's default of 5, a client opening many connections at once loses SYNs and waits a 1 s
    # retransmission for each, which measures the emulator, not the client.
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    bound = server.server_address
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    sys.stdout.write(f"listening on {shown}:{bound[1]}\n")
    sys.stdout.flush()

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        emu.lake.close()
    return 0
