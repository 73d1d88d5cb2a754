"""DuckLake side of the emulator: catalog, automatic schema handling, casts, writes.

Every DuckDB call goes through Lake.lock: one connection, writes serialized.
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading

import duckdb
import orjson

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LAKE_ALIAS = "lake"


class RequestError(Exception):
    """A request-level failure: answered with `status` and nothing written."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def ducklake_extension_path() -> str:
    """The ducklake extension binary shipped by the duckdb-extension-ducklake wheel."""
    import duckdb_extension_ducklake as pkg

    base = os.path.join(os.path.dirname(pkg.__file__), "extensions")
    exact = os.path.join(base, "v" + duckdb.__version__, "ducklake.duckdb_extension")
    if os.path.exists(exact):
        return exact
    found = sorted(glob.glob(os.path.join(base, "*", "ducklake.duckdb_extension")))
    if not found:
        raise RuntimeError(f"ducklake extension not found under {base}")
    return found[-1]


def qi(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ---------------------------------------------------------------------------
# Types: inference for new columns, and per-value casts to a declared type.
# ---------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

INT_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (INT64_MIN, INT64_MAX),
    "UTINYINT": (0, 2**8 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1),
}
FLOAT_TYPES = {"DOUBLE", "FLOAT", "REAL"}
FLOAT32_MAX = 3.4028234663852886e38
BOOL_TRUE = {"true", "t", "yes", "y", "1"}
BOOL_FALSE = {"false", "f", "no", "n", "0"}


def infer_type(v) -> str | None:
    """Type of a new column from the first non-null value seen."""
    if v is None:
        return None
    if v is True or v is False:
        return "BOOLEAN"
    if isinstance(v, int):
        return "BIGINT" if INT64_MIN <= v <= INT64_MAX else "DOUBLE"
    if isinstance(v, float):
        return "DOUBLE"
    if isinstance(v, str):
        return "VARCHAR"
    return "JSON"  # dict or list


class CastError(Exception):
    pass


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _to_int(v, lo: int, hi: int) -> int:
    if v is True or v is False:
        r = int(v)
    elif isinstance(v, int):
        r = v
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise CastError("not a finite number")
        r = _round_half_away(v)
    elif isinstance(v, str):
        s = v.strip()
        try:
            r = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                raise CastError("not an integer") from None
            if not math.isfinite(f):
                raise CastError("not a finite number")
            r = _round_half_away(f)
    else:
        raise CastError("an object/array cannot become an integer")
    if r < lo or r > hi:
        raise CastError("integer out of range")
    return r


def _to_float(v, single: bool) -> float:
    if v is True or v is False:
        return float(v)
    if isinstance(v, (int, float)):
        r = float(v)
    elif isinstance(v, str):
        try:
            r = float(v.strip())
        except ValueError:
            raise CastError("not a number") from None
    else:
        raise CastError("an object/array cannot become a number")
    if not math.isfinite(r) or (single and abs(r) > FLOAT32_MAX):
        raise CastError("number out of range")
    return r


def _to_bool(v) -> bool:
    if v is True or v is False:
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, str):
        s = v.strip().lower()
        if s in BOOL_TRUE:
            return True
        if s in BOOL_FALSE:
            return False
        raise CastError("not a boolean")
    raise CastError("an object/array cannot become a boolean")


def _to_text(v) -> str:
    """How DuckDB renders a value cast to VARCHAR (booleans lowercase)."""
    if isinstance(v, str):
        return v
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return orjson.dumps(v).decode()


class Column:
    """A target column and how values travel to it.

    `transport` is the type used in the staged JSON document (from_json);
    generic columns travel as VARCHAR and are CAST in SQL, after a TRY_CAST
    pre-check that rejects individual rows.
    """

    __slots__ = ("name", "type", "base", "transport", "generic", "cast")

    def __init__(self, name: str, type_: str):
        self.name = name
        self.type = type_
        base = type_.upper()
        self.base = base
        self.generic = False
        if base in INT_RANGES:
            lo, hi = INT_RANGES[base]
            self.transport = "UBIGINT" if base == "UBIGINT" else "BIGINT"
            self.cast = lambda v, lo=lo, hi=hi: _to_int(v, lo, hi)
        elif base in FLOAT_TYPES:
            single = base != "DOUBLE"
            self.transport = "DOUBLE"
            self.cast = lambda v, s=single: _to_float(v, s)
        elif base == "BOOLEAN":
            self.transport = "BOOLEAN"
            self.cast = _to_bool
        elif base == "VARCHAR":
            self.transport = "VARCHAR"
            self.cast = _to_text
        elif base == "JSON":
            self.transport = "JSON"
            self.cast = lambda v: v
        else:
            self.transport = "VARCHAR"
            self.generic = True
            self.cast = _to_text


# ---------------------------------------------------------------------------
# The lake
# ---------------------------------------------------------------------------


class Lake:
    def __init__(self, lake_dir: str, namespaces: list[str], auto_create: bool = True):
        self.dir = os.path.abspath(lake_dir)
        self.data_dir = os.path.join(self.dir, "data") + os.sep
        self.catalog = os.path.join(self.dir, "catalog.ducklake")
        self.auto_create = auto_create
        os.makedirs(self.data_dir, exist_ok=True)
        self.lock = threading.RLock()
        self.con = duckdb.connect(
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": True}
        )
        self.con.execute(f"LOAD {sql_str(ducklake_extension_path())}")
        self.con.execute(
            f"ATTACH {sql_str('ducklake:' + self.catalog)} AS {LAKE_ALIAS} "
            f"(DATA_PATH {sql_str(self.data_dir)})"
        )
        for ns in namespaces:
            if not IDENT_RE.match(ns):
                raise ValueError(f"bad namespace name: {ns!r}")
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {LAKE_ALIAS}.{qi(ns)}")

    def close(self):
        with self.lock:
            try:
                self.con.close()
            except Exception:
                pass

    # -- catalog look-ups (call with the lock held) --------------------------

    def _namespace(self, ns: str) -> str | None:
        r = self.con.execute(
            "SELECT schema_name FROM information_schema.schemata "
            "WHERE catalog_name = ? AND lower(schema_name) = lower(?)",
            [LAKE_ALIAS, ns],
        ).fetchone()
        return r[0] if r else None

    def _columns(self, ns: str, table: str) -> tuple[str, list[Column]] | None:
        rows = self.con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = ? AND table_schema = ? AND lower(table_name) = lower(?) "
            "ORDER BY ordinal_position",
            [LAKE_ALIAS, ns, table],
        ).fetchall()
        if not rows:
            return None
        return rows[0][0], [Column(r[1], r[2]) for r in rows]

    def snapshot_id(self) -> int:
        with self.lock:
            return self.con.execute(f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()").fetchone()[0]

    # -- admin ----------------------------------------------------------------

    def create_table(self, ns: str, table: str, columns: dict):
        if not isinstance(columns, dict) or not columns:
            raise RequestError(400, "columns must be a non-empty object {name: TYPE}")
        cols = []
        for name, typ in columns.items():
            if not isinstance(name, str) or not name or not isinstance(typ, str) or not typ.strip():
                raise RequestError(400, "columns must map names to SQL type strings")
            cols.append(f"{qi(name)} {typ}")
        with self.lock:
            real_ns = self._namespace(ns)
            if real_ns is None:
                raise RequestError(404, f"namespace '{ns}' does not exist")
            if self._columns(real_ns, table) is not None:
                raise RequestError(409, f"table {real_ns}.{table} already exists")
            try:
                self.con.execute(
                    f"CREATE TABLE {LAKE_ALIAS}.{qi(real_ns)}.{qi(table)} ({', '.join(cols)})"
                )
            except duckdb.Error as e:
                raise RequestError(400, f"create table failed: {e}") from None

    def drop_table(self, ns: str, table: str) -> bool:
        with self.lock:
            real_ns = self._namespace(ns)
            if real_ns is None:
                return False
            found = self._columns(real_ns, table)
            if found is None:
                return False
            self.con.execute(f"DROP TABLE {LAKE_ALIAS}.{qi(real_ns)}.{qi(found[0])}")
            return True

    def query(self, sql: str) -> dict:
        """Run a statement; rows come back as JSON-ready lists (via DuckDB's to_json)."""
        sql = sql.strip().rstrip(";").strip()
        with self.lock:
            try:
                cur = self.con.execute(f"SELECT to_json(_q) FROM ({sql}) AS _q")
                out = cur.fetchall()
                objs = [orjson.loads(r[0]) for r in out]
                cols = list(objs[0].keys()) if objs else []
                if not objs:
                    desc = self.con.execute(f"SELECT * FROM ({sql}) AS _q LIMIT 0").description
                    cols = [d[0] for d in desc]
                return {"columns": cols, "rows": [list(o.values()) for o in objs]}
            except duckdb.ParserException:
                pass  # not a SELECT-like statement: run it as is
            cur = self.con.execute(sql)
            if cur.description is None:
                return {"columns": [], "rows": []}
            cols = [d[0] for d in cur.description]
            rows = [
                [v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in r]
                for r in cur.fetchall()
            ]
            return {"columns": cols, "rows": rows}

    # -- the write path ---------------------------------------------------------

    def write(self, ns: str, table: str, rows: list, candidates: list[int], mode: str,
              pk: str | None, wait: bool, errors: list[str]) -> dict:
        """Write rows[i] for i in candidates (already through the schema-free checks).

        Row-level cast failures are appended to `errors`. Returns
        {"written": n, "rejected": n, "snapshot_id": id|None, "table": name}.
        Raises RequestError for request-level failures (nothing written).
        """
        with self.lock:
            real_ns = self._namespace(ns)
            if real_ns is None:
                raise RequestError(404, f"namespace '{ns}' does not exist")
            found = self._columns(real_ns, table)
            if found is None and not self.auto_create:
                raise RequestError(404, f"table {ns}.{table} does not exist")
            real_table = found[0] if found else table
            existing = found[1] if found else []
            by_lower: dict[str, Column] = {c.name.lower(): c for c in existing}

            # New columns: the first non-null value (in row order) decides the type.
            new_order: list[str] = []
            new_first: dict[str, str] = {}  # lower -> spelling
            new_type: dict[str, str | None] = {}
            for i in candidates:
                for k, v in rows[i].items():
                    lk = k.lower()
                    if lk in by_lower:
                        continue
                    if lk not in new_first:
                        new_first[lk] = k
                        new_order.append(lk)
                        new_type[lk] = None
                    if new_type[lk] is None and v is not None:
                        new_type[lk] = infer_type(v)
            for lk in new_order:
                by_lower[lk] = Column(new_first[lk], new_type[lk] or "VARCHAR")

            # Column slots in the staged document.
            all_cols = existing + [by_lower[lk] for lk in new_order]
            slot = {c.name.lower(): f"c{n}" for n, c in enumerate(all_cols)}

            # Per-row casts, in Python, before anything is written.
            staged: list[dict] = []
            staged_idx: list[int] = []
            used: set[str] = set()
            rejected = 0
            for i in candidates:
                out = {}
                bad = None
                for k, v in rows[i].items():
                    lk = k.lower()
                    if v is None:
                        out[slot[lk]] = None
                        continue
                    col = by_lower[lk]
                    try:
                        out[slot[lk]] = col.cast(v)
                    except CastError as e:
                        bad = f"field '{k}': cannot cast {_short(v)} to {col.type} ({e})"
                        break
                if bad:
                    rejected += 1
                    errors.append(f"row {i}: {bad}")
                    continue
                staged.append(out)
                staged_idx.append(i)
                used.update(rows[i].keys())

            # Generic (non-core) column types: DuckDB TRY_CAST pre-check per value.
            used_lower = {k.lower() for k in used}
            for col in all_cols:
                if not col.generic or col.name.lower() not in used_lower:
                    continue
                s = slot[col.name.lower()]
                probe = [[n, r[s]] for n, r in enumerate(staged) if r.get(s) is not None]
                if not probe:
                    continue
                bad_pos = {
                    r[0]
                    for r in self.con.execute(
                        f"SELECT p[1]::BIGINT FROM (SELECT unnest(from_json(?, '[[\"VARCHAR\"]]')) AS p) "
                        f"WHERE TRY_CAST(p[2] AS {col.type}) IS NULL",
                        [orjson.dumps(probe).decode()],
                    ).fetchall()
                }
                if bad_pos:
                    keep_rows, keep_idx = [], []
                    for n, (r, i) in enumerate(zip(staged, staged_idx)):
                        if n in bad_pos:
                            rejected += 1
                            errors.append(
                                f"row {i}: field '{col.name}': cannot cast {_short(r[s])} to {col.type}"
                            )
                        else:
                            keep_rows.append(r)
                            keep_idx.append(i)
                    staged, staged_idx = keep_rows, keep_idx

            if mode == "merge" and staged:
                ks = slot[pk.lower()]
                seen = set()
                for r in staged:
                    key = r.get(ks)
                    key = orjson.dumps(key) if isinstance(key, (dict, list)) else key
                    if key in seen:
                        raise RequestError(400, "duplicate primary key values in one request; dedupe upstream")
                    seen.add(key)

            fq = f"{LAKE_ALIAS}.{ns}.{real_table}"
            if not staged:
                return {"written": 0, "rejected": rejected, "snapshot_id": None, "table": fq}

            # Only the columns some written row actually carries go in the statement.
            present = set()
            for r in staged:
                present.update(r.keys())
            add_cols = [by_lower[lk] for lk in new_order if slot[lk] in present]
            write_cols = [c for c in all_cols if slot[c.name.lower()] in present]
            target = f"{LAKE_ALIAS}.{qi(real_ns)}.{qi(real_table)}"
            struct = "[{" + ",".join(
                f'"{slot[c.name.lower()]}":"{c.transport}"' for c in write_cols
            ) + "}]"
            sel = ", ".join(
                (f"CAST(s.{slot[c.name.lower()]} AS {c.type})" if c.generic else f"s.{slot[c.name.lower()]}")
                + f" AS {qi(c.name)}"
                for c in write_cols
            )
            src = f"SELECT {sel} FROM (SELECT unnest(from_json(?, {sql_str(struct)})) AS s)"
            doc = orjson.dumps(staged).decode()

            self.con.execute("BEGIN TRANSACTION")
            try:
                if found is None:
                    self.con.execute(
                        f"CREATE TABLE {target} ("
                        + ", ".join(f"{qi(c.name)} {c.type}" for c in add_cols)
                        + ")"
                    )
                else:
                    for c in add_cols:
                        self.con.execute(f"ALTER TABLE {target} ADD COLUMN {qi(c.name)} {c.type}")
                names = ", ".join(qi(c.name) for c in write_cols)
                if mode == "merge":
                    pkc = by_lower[pk.lower()]
                    table_cols = existing + add_cols
                    # "Existing rows whose PK matches an incoming row are replaced":
                    # columns the batch does not carry are set to NULL.
                    sets = ", ".join(
                        f"{qi(c.name)} = "
                        + (f"s.{qi(c.name)}" if c in write_cols else "NULL")
                        for c in table_cols
                        if c is not pkc
                    )
                    matched = f"WHEN MATCHED THEN UPDATE SET {sets} " if sets else ""
                    self.con.execute(
                        f"MERGE INTO {target} AS t USING ({src}) AS s "
                        f"ON t.{qi(pkc.name)} = s.{qi(pkc.name)} "
                        f"{matched}"
                        f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES "
                        f"({', '.join('s.' + qi(c.name) for c in write_cols)})",
                        [doc],
                    )
                else:
                    self.con.execute(f"INSERT INTO {target} ({names}) {src}", [doc])
                self.con.execute("COMMIT")
            except duckdb.Error as e:
                try:
                    self.con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                status = 400 if isinstance(e, duckdb.ConversionException) else 500
                raise RequestError(status, f"write failed: {e}") from None
            snap = None
            if wait:
                snap = self.con.execute(f"SELECT id FROM {LAKE_ALIAS}.current_snapshot()").fetchone()[0]
            return {"written": len(staged), "rejected": rejected, "snapshot_id": snap, "table": fq}


def _short(v) -> str:
    s = orjson.dumps(v).decode() if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
