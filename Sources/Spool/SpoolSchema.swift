/// The spool's on-disk layout, versioned with `PRAGMA user_version`.
///
/// The spool is an append-only log per target, not a row per record: each group commit appends, for each
/// target it touched, one `segments` row holding that commit's records for the target as newline-separated
/// compact JSON, with their count and the sequence number of the first. Sequence numbers increase per
/// target without gaps, so a record is addressed as (target, seq), and a batch as a seq range that stays
/// the same across retries. `targets.delivered_seq` is the delivery position: every record with a lower
/// seq has left the queue (delivered or dead-lettered).
///
/// A commit of a few records writes one page: the `segments` row, which holds them (the table is keyed by
/// target and seq itself, so there is no index page to write too), and not the target's row. The target's
/// `next_seq` and `pending_bytes` are brought up to date at most once a second (``TargetLog``).
enum SpoolSchema {
    /// Identifies a definite-agent spool (`PRAGMA application_id`), ASCII "DFAG".
    static let applicationID: Int32 = 0x4446_4147
    static let currentVersion = 3

    /// Migrations from version `index` to `index + 1`, applied in one transaction each. A spool written by an
    /// earlier version is migrated when the daemon opens it; `Tests/Fixtures/spool-v1.db` and `spool-v2.db`
    /// (written by the releases before versions 2 and 3) check that nothing in them is lost.
    static let migrations: [String] = [
        // 0 → 1
        """
        CREATE TABLE targets (
            id              INTEGER PRIMARY KEY,
            table_name      TEXT    NOT NULL,
            mode            TEXT    NOT NULL CHECK (mode IN ('append', 'merge')),
            primary_key     TEXT    NOT NULL DEFAULT '',
            tags            TEXT    NOT NULL DEFAULT '',
            next_seq        INTEGER NOT NULL DEFAULT 0,
            delivered_seq   INTEGER NOT NULL DEFAULT 0,
            pending_bytes   INTEGER NOT NULL DEFAULT 0,
            created_at      REAL    NOT NULL,
            last_success_at REAL,
            last_error      TEXT,
            state           TEXT,
            state_until     REAL,
            UNIQUE (table_name, mode, primary_key, tags)
        );
        CREATE TABLE segments (
            id           INTEGER PRIMARY KEY,
            target_id    INTEGER NOT NULL REFERENCES targets (id),
            first_seq    INTEGER NOT NULL,
            record_count INTEGER NOT NULL,
            byte_count   INTEGER NOT NULL,
            appended_at  REAL    NOT NULL,
            records      BLOB    NOT NULL
        );
        CREATE UNIQUE INDEX segments_by_target ON segments (target_id, first_seq);
        CREATE TABLE dead_letters (
            id              INTEGER PRIMARY KEY,
            target_id       INTEGER NOT NULL REFERENCES targets (id),
            first_seq       INTEGER,
            record_count    INTEGER NOT NULL,
            byte_count      INTEGER NOT NULL,
            records         BLOB    NOT NULL,
            reason          TEXT    NOT NULL,
            http_status     INTEGER,
            errors          TEXT,
            warnings        TEXT,
            request_id      TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0,
            partial         INTEGER NOT NULL DEFAULT 0,
            first_failed_at REAL    NOT NULL,
            last_failed_at  REAL    NOT NULL
        );
        CREATE INDEX dead_letters_by_target ON dead_letters (target_id);
        -- A batch is fixed (its seq range and id) before its first attempt, so every retry, even after a
        -- restart, sends the same rows under the same id.
        CREATE TABLE batches (
            id              TEXT    PRIMARY KEY,
            target_id       INTEGER NOT NULL REFERENCES targets (id),
            first_seq       INTEGER NOT NULL,
            end_seq         INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            created_at      REAL    NOT NULL,
            last_attempt_at REAL,
            last_status     INTEGER,
            last_error      TEXT
        );
        CREATE INDEX batches_by_target ON batches (target_id, first_seq);
        -- Seq ranges that left the queue ahead of delivered_seq (batches finishing out of order, rows of a
        -- split batch). Folded into delivered_seq as soon as they become contiguous with it.
        CREATE TABLE delivered_ranges (
            target_id INTEGER NOT NULL REFERENCES targets (id),
            first_seq INTEGER NOT NULL,
            end_seq   INTEGER NOT NULL,
            PRIMARY KEY (target_id, first_seq)
        ) WITHOUT ROWID;
        -- Running totals the daemon keeps for `status` (datagram intake: received, rejected, dropped).
        CREATE TABLE counters (
            name  TEXT    PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
        // 1 → 2: isolation of refused rows survives restarts. A batch without parts is one part, not yet
        // sent (or sent and failed transiently). Batches open in a version-1 spool are resumed as that.
        """
        CREATE TABLE batch_parts (
            batch_id   TEXT    NOT NULL REFERENCES batches (id),
            first_seq  INTEGER NOT NULL,
            end_seq    INTEGER NOT NULL,
            -- 1: the part holds at least one row the API refuses (known from the answer described below);
            -- 0: not known, the part is sent whole.
            refused    INTEGER NOT NULL DEFAULT 0,
            status     INTEGER,
            reason     TEXT,
            errors     TEXT,
            request_id TEXT,
            PRIMARY KEY (batch_id, first_seq)
        ) WITHOUT ROWID;
        -- A segment's records were written with these config.tags (compact JSON; '' for none): requests with
        -- different tags share their target and are batched together. Targets with tags of their own come
        -- from version 1 and keep them.
        ALTER TABLE segments ADD COLUMN tags TEXT NOT NULL DEFAULT '';
        -- The tags of a dead letter's rows: [{"from":i,"to":j,"tags":{...}}] over its rows, or '' for none.
        ALTER TABLE dead_letters ADD COLUMN tags TEXT NOT NULL DEFAULT '';
        """,
        // 2 → 3: segments are keyed by (target, seq) and appended without rewriting their target's row.
        """
        -- Segments keyed by (target, first seq) in the table itself: appending a few records writes one
        -- page, the row's, where a rowid table wrote its own page and its index's. A table keyed this way
        -- repeats whole rows in its interior pages, so only small appends keep their records in the row
        -- (`records`, at most 512 bytes: SegmentLog.maxInlineBytes); larger ones go to segment_records
        -- (`records_id`), which a trigger empties with the segment.
        --
        -- From here on a target's next_seq and pending_bytes are settled at most once a second rather than
        -- at every commit: next_seq is at most where the log ends, pending_bytes counts the segments below
        -- next_seq (TargetLog in the sources has the rest). Version 2 kept pending_bytes by delivered
        -- batches rather than by removed segments: count it afresh.
        CREATE TABLE segment_records (
            id      INTEGER PRIMARY KEY,
            records BLOB    NOT NULL
        );
        CREATE TABLE segments_keyed (
            target_id    INTEGER NOT NULL REFERENCES targets (id),
            first_seq    INTEGER NOT NULL,
            record_count INTEGER NOT NULL,
            byte_count   INTEGER NOT NULL,
            appended_at  REAL    NOT NULL,
            records_id   INTEGER REFERENCES segment_records (id),
            tags         TEXT    NOT NULL DEFAULT '',
            records      BLOB,
            PRIMARY KEY (target_id, first_seq),
            CHECK ((records IS NULL) <> (records_id IS NULL))
        ) WITHOUT ROWID;
        INSERT INTO segment_records (id, records) SELECT id, records FROM segments;
        INSERT INTO segments_keyed (target_id, first_seq, record_count, byte_count, appended_at, records_id, tags)
            SELECT target_id, first_seq, record_count, byte_count, appended_at, id, tags FROM segments;
        DROP TABLE segments;
        ALTER TABLE segments_keyed RENAME TO segments;
        CREATE TRIGGER segments_drop_records AFTER DELETE ON segments WHEN old.records_id IS NOT NULL BEGIN
            DELETE FROM segment_records WHERE id = old.records_id;
        END;
        UPDATE targets SET pending_bytes = (SELECT coalesce(sum(byte_count), 0) FROM segments s WHERE s.target_id = targets.id);
        """,
    ]
}
