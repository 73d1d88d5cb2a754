import ArgumentParser
import Foundation

/// `definite-agent-bench`: measures the agent against this machine's own limits, in one run, and prints
/// one table. It never asserts timings: every figure is reported, targets are marked met or missed, and a
/// measurement that fails is reported as failed (the exit status stays 0).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "definite-agent-bench",
        abstract: "Measure definite-agent against this machine's own limits.",
        discussion: """
            Starts the release daemon (and the Stream API emulator in null mode) on temporary paths and
            measures: the raw SQLite limit; acknowledged intake (1/8/64 clients, durability full/normal);
            8 `definite-agent send` processes loading 8 files; ack latency at 20,000 records/s offered;
            delivery of a pre-filled spool (gzip levels 6/3/1 and none, and with the API 150 ms away);
            intake and delivery together; peak RSS, and RSS and start-up time with a large backlog; delivery
            at scale (200 tables, a trace id per request, 150 ms away) and idle; disk writes per record when
            one client sends one acknowledged record at a time; with --peer-fluent-bit, the agent against
            Fluent Bit on the same records (socat writers, fsync, gzipped NDJSON over HTTP).
            Build first: swift build -c release --product definite-agent
            """)

    @Option(help: "The definite-agent binary to start.")
    var binary = ".build/release/definite-agent"

    @Option(help: "The Stream API emulator script.")
    var emulator = "Tests/Emulator/emulator.py"

    @Option(help: "Records per intake measurement (default 1,000,000; --quick 50,000).")
    var records: Int?

    @Option(parsing: .upToNextOption, help: "Client counts to measure intake with.")
    var clients: [Int] = [1, 8, 64]

    @Option(parsing: .upToNextOption, help: "Durability settings to measure intake with.")
    var durability: [String] = ["full", "normal"]

    @Option(
        help: ArgumentHelp(
            "A Fluent Bit binary to compare the agent with (the peer section; skipped without it).",
            valueName: "path"))
    var peerFluentBit: String?

    @Flag(help: "Small counts and short runs: the whole table in under a minute.")
    var quick = false

    @Option(
        parsing: .upToNextOption,
        help:
            "Run only these measurements (raw, intake, send, latency, delivery, e2e, backlog, scale, lowrate, peer), e.g. while profiling.")
    var only: [Measurement] = Measurement.allCases

    enum Measurement: String, CaseIterable, ExpressibleByArgument {
        case raw, intake, send, latency, delivery, e2e, backlog, scale, lowrate, peer
    }

    func run() throws {
        let plan = Plan(quick: quick, intakeRecords: records)
        let started = Monotonic.nanos()
        let report = Report()
        progress("rendering \(Format.grouped(plan.corpusRecords)) records")
        let corpus = Corpus(count: plan.corpusRecords)

        // (1) The raw limit.
        var raw: Double?
        report.measure("raw SQLite limit", if: only.contains(.raw)) {
            let rate = try SQLiteLimit.measure(records: plan.rawRows)
            raw = rate
            report.table.add(
                "raw SQLite limit (row per record, 1,000 per txn, FULL)", "\(Format.grouped(rate)) rows/s",
                "\(Format.grouped(plan.rawRows)) rows")
        }
        report.table.separator()

        // (2) Acknowledged intake.
        let intake = AckedIntake(binary: binary, corpus: corpus)
        for mode in durability {
            for n in clients {
                let label = "acked intake, \(n) client\(n == 1 ? "" : "s"), \(mode)"
                report.measure(label, if: only.contains(.intake)) {
                    let f = try intake.measure(clients: n, durability: mode, records: plan.intakeRecords)
                    report.peaks.append((label, f.peakRSSKiB))
                    if n == 8 && mode == "full" { report.intake8Full = f.recordsPerSecond }
                    report.table.add(
                        label, "\(Format.grouped(f.recordsPerSecond)) records/s",
                        (raw.map { "\(Format.fixed(f.recordsPerSecond / $0, 2))× raw, " } ?? "")
                            + "daemon CPU \(Format.fixed(f.daemonCPUMicrosPerRecord, 2)) µs/record, "
                            + "peak RSS \(Format.mib(kib: f.peakRSSKiB))" + Self.failures(f.failed, f.errors))
                }
            }
        }
        report.table.separator()

        // (2b) The command line client, and the files it loads (the peer comparison loads them too).
        let peerSelected = only.contains(.peer) && peerFluentBit != nil
        var parts: PartFiles?
        report.measure("part files", if: only.contains(.send) || peerSelected) {
            progress("writing \(Format.grouped(plan.partRecords)) records of \(PartFiles.recordBytes) bytes in 8 files")
            parts = try PartFiles(records: plan.partRecords)
        }
        defer { parts?.remove() }
        if let parts {
            report.measure("send", if: only.contains(.send)) {
                let f = try SendLoad(binary: binary).measure(parts: parts)
                let label = "8 send processes, \(Format.grouped(f.records)) records, full"
                report.peaks.append((label, f.peakRSSKiB))
                report.send = f.recordsPerSecond
                report.table.add(
                    label, "\(Format.grouped(f.recordsPerSecond)) records/s",
                    (raw.map { "\(Format.fixed(f.recordsPerSecond / $0, 2))× raw, " } ?? "")
                        + "send CPU \(Format.fixed(f.sendCPUMicrosPerRecord, 2)) µs/record, "
                        + "daemon CPU \(Format.fixed(f.daemonCPUMicrosPerRecord, 2)) µs/record, "
                        + "peak RSS \(Format.mib(kib: f.peakRSSKiB))"
                        + (f.problems.isEmpty ? "" : ", PROBLEMS: \(f.problems.prefix(2).joined(separator: "; "))"))
            }
        }
        report.table.separator()

        // (3) Ack latency at a fixed offered load.
        report.measure("ack latency", if: only.contains(.latency)) {
            let f = try AckLatency(binary: binary, corpus: corpus)
                .measure(clients: 8, perClientRate: 2_500, seconds: plan.latencySeconds)
            report.peaks.append(("ack latency", f.peakRSSKiB))
            let h = f.histogram
            report.p99 = h.valueAtPercentile(99)
            let label = "ack latency, \(Format.grouped(f.offeredPerSecond)) records/s offered (8 × 2,500), full"
            report.table.add(
                label, "p50 \(Format.ms(nanos: h.valueAtPercentile(50)))",
                "\(Format.grouped(Int(h.totalCount))) acks, achieved \(Format.grouped(f.achievedPerSecond)) records/s")
            report.table.add(
                "", "p99 \(Format.ms(nanos: h.valueAtPercentile(99)))",
                "from each record's due send time (HdrHistogram, 3 digits)")
            report.table.add(
                "", "p99.9 \(Format.ms(nanos: h.valueAtPercentile(99.9)))",
                "max \(Format.ms(nanos: h.max)), peak RSS \(Format.mib(kib: f.peakRSSKiB))"
                    + Self.failures(f.failed, f.errors))
        }
        report.table.separator()

        // (4)–(6) need the emulator.
        var stream: Emulator?
        let needsEmulator = !Set(only).isDisjoint(with: [.delivery, .e2e, .backlog, .scale, .lowrate]) || (peerSelected && parts != nil)
        report.measure("emulator", if: needsEmulator) { stream = try Emulator(script: emulator) }
        if let stream {
            defer { stream.stop() }
            report.measure("delivery", if: only.contains(.delivery)) {
                let figures = try Delivery(binary: binary, corpus: corpus, emulator: stream)
                    .measure(
                        records: plan.deliveryRecords,
                        settings: [
                            .init(compression: "gzip"), .init(compression: "none"),
                            // Not targets: what the gzip level costs and saves (see BENCHMARKS.md).
                            .init(compression: "gzip", gzipLevel: 3), .init(compression: "gzip", gzipLevel: 1),
                            // A distant API: a WAN round trip plus a commit.
                            .init(compression: "gzip", latencyMs: 150),
                        ])
                for f in figures {
                    let label = "delivery, \(Format.grouped(f.records)) backlog, \(f.setting)"
                    report.peaks.append((label, f.peakRSSKiB))
                    if f.setting.compression == "gzip" && f.setting.gzipLevel == nil {
                        if f.setting.latencyMs == 0 {
                            report.deliveryGzip = f.recordsPerSecond
                        } else {
                            report.deliveryDistant = f.recordsPerSecond
                        }
                    }
                    report.table.add(
                        label, "\(Format.grouped(f.recordsPerSecond)) records/s",
                        "\(Format.fixed(f.seconds, 2)) s, \(Format.bytes(f.pendingBytes)) spooled → "
                            + "\(Format.fixed(Double(f.bytesSent) / Double(max(1, f.records)), 1)) B/record, "
                            + "\(Format.bytes(f.bytesSent)) sent (\(Format.fixed(f.compressionRatio, 1))×) in \(f.requests) requests, "
                            + "peak RSS \(Format.mib(kib: f.peakRSSKiB)), CPU s: daemon "
                            + "\(Format.fixed(f.daemonCPU, 2)), emulator \(Format.fixed(f.emulatorCPU, 2))")
                }
            }
            report.table.separator()

            report.measure("end to end", if: only.contains(.e2e)) {
                let f = try EndToEnd(binary: binary, corpus: corpus, emulator: stream)
                    .measure(clients: 8, seconds: plan.endToEndSeconds)
                let label = "end to end, \(Int(plan.endToEndSeconds)) s, 8 clients, full, gzip"
                report.peaks.append((label, f.peakRSSKiB))
                report.endToEnd = (f.intakePerSecond, f.deliveredPerSecond)
                report.table.add(
                    label, "in \(Format.grouped(f.intakePerSecond)) records/s",
                    "acked through intake" + Self.failures(f.failed, f.errors))
                report.table.add(
                    "", "out \(Format.grouped(f.deliveredPerSecond)) records/s",
                    "delivered, \(Format.grouped(f.pendingAtEnd)) pending at the end, "
                        + "peak RSS \(Format.mib(kib: f.peakRSSKiB))")
            }
            report.table.separator()

            report.measure("scale", if: only.contains(.scale)) {
                let scale = Scale(binary: binary, emulator: stream)
                let (tables, idle) = try scale.manyTables(tables: 200, rows: 50, latencyMs: 150)
                let (traced, tracedIdle) = try scale.traceTags(count: plan.traceRequests, latencyMs: 150)
                for drain in [tables, traced] {
                    report.peaks.append((drain.label, drain.peakRSSKiB))
                    report.table.add(
                        "\(drain.label), API 150 ms away", "\(Format.fixed(drain.seconds, 2)) s to drain",
                        "\(Format.grouped(Double(drain.requests))) requests, peak RSS \(Format.mib(kib: drain.peakRSSKiB))")
                }
                report.manyTables = tables.seconds
                report.traced = traced.seconds
                for (label, figures) in [("idle after 200 tables", idle), ("idle after the trace ids", tracedIdle)] {
                    report.idleWakeups = max(report.idleWakeups ?? 0, figures.wakeupsPerSecond)
                    report.table.add(
                        label, "\(Format.fixed(figures.wakeupsPerSecond, 1)) wake-ups/s",
                        "CPU \(Format.fixed(figures.cpuShare * 100, 2)) % of a core, over 5 s")
                }
            }
            report.table.separator()

            report.measure("low rate", if: only.contains(.lowrate)) {
                let f = try LowRate(binary: binary, emulator: stream).measure(records: plan.lowRateRecords, perSecond: 250)
                report.lowRateBytes = f.writtenPerRecord
                report.table.add(
                    "one acked record at a time, \(Format.grouped(f.rate))/s, full",
                    "\(Format.grouped(f.writtenPerRecord)) B/record written",
                    "\(Format.grouped(f.records)) records, write calls (/proc wchar); "
                        + "\(Format.grouped(f.storagePerRecord)) B/record to storage (write_bytes, whole 4 KiB blocks)")
            }
            report.table.separator()

            let peak = report.peaks.max { $0.1 < $1.1 }
            report.table.add(
                "peak RSS of the daemon during 2–5", peak.map { Format.mib(kib: $0.1) } ?? "–",
                peak.map { "VmHWM, highest in: \($0.0)" } ?? "")

            report.measure("backlog", if: only.contains(.backlog)) {
                let f = try Backlog(binary: binary, corpus: corpus, emulator: stream)
                    .measure(records: plan.backlogRecords, deliverSeconds: plan.backlogWatchSeconds)
                let n = Format.grouped(f.records)
                report.peaks.append(("backlog fill", f.fillPeakRSSKiB))
                report.peaks.append(("backlog delivery", f.peakRSSKiB))
                report.ready = (f.readySeconds, f.records)
                report.table.add(
                    "fill \(n) records (no API key), 8 clients", "\(Format.grouped(f.fillPerSecond)) records/s",
                    "peak RSS \(Format.mib(kib: f.fillPeakRSSKiB))")
                report.table.add(
                    "start-up to READY=1 with \(n) pending", "\(Format.fixed(f.readySeconds * 1000, 0)) ms",
                    "spawn → READY=1 on NOTIFY_SOCKET")
                report.table.add("RSS at READY with \(n) pending", Format.mib(kib: f.rssAtReadyKiB), "VmRSS")
                report.table.add(
                    "peak RSS delivering from \(n) pending", Format.mib(kib: f.peakRSSKiB),
                    "VmHWM after \(Format.fixed(f.deliveringSeconds, 0)) s, "
                        + "\(Format.grouped(f.deliveredWhileWatched)) delivered by then")
            }

            if let parts, let peerFluentBit, only.contains(.peer) {
                report.table.separator()
                let comparison = PeerComparison(binary: binary, emulator: stream, parts: parts)
                var agent: PeerComparison.Side?
                var peer: PeerComparison.Side?
                report.measure("peer: definite-agent") { agent = try comparison.agent() }
                report.measure("peer: Fluent Bit") { peer = try comparison.fluentBit(path: peerFluentBit) }
                report.peer = (agent, peer)
                let label = "vs Fluent Bit, \(Format.grouped(parts.records)) × \(PartFiles.recordBytes) B, 8 socat"
                for (i, side) in [agent, peer].compactMap({ $0 }).enumerated() {
                    report.table.add(
                        i == 0 ? label : "", "\(side.name) \(Format.grouped(side.recordsPerSecond)) records/s",
                        "\(Format.fixed(side.seconds, 2)) s end to end, CPU \(Format.fixed(side.cpuMicrosPerRecord, 2)) µs/record, "
                            + "peak RSS \(Format.mib(kib: side.peakRSSKiB)), \(Format.bytes(side.bytesSent)) sent "
                            + "in \(side.requests) requests, emulator CPU \(Format.fixed(side.emulatorCPU, 2)) s")
                }
                if let agent, let peer {
                    report.table.add(
                        "", "ratio \(Format.fixed(agent.recordsPerSecond / peer.recordsPerSecond, 2))×",
                        "agent / Fluent Bit, records/s end to end; CPU per record "
                            + "\(Format.fixed(agent.cpuMicrosPerRecord / peer.cpuMicrosPerRecord, 2))×, peak RSS "
                            + "\(Format.fixed(Double(agent.peakRSSKiB) / Double(max(1, peer.peakRSSKiB)), 2))×")
                }
            }
        }
        if peerFluentBit == nil && only.contains(.peer) && only.count < Measurement.allCases.count {
            report.table.add("vs Fluent Bit", "skipped", "give --peer-fluent-bit PATH")
        }

        print(report.table.render())
        print("")
        print(report.targets(raw: raw, quick: quick, backlog: plan.backlogRecords).render())
        print("")
        print(
            "total bench time \(Format.fixed(Monotonic.seconds(since: started), 1)) s\(quick ? " (--quick: small counts, figures indicative only)" : "")"
        )
    }

    static func failures(_ failed: Int, _ errors: [String]) -> String {
        (failed > 0 ? ", \(failed) REFUSED" : "") + (errors.isEmpty ? "" : ", ERRORS: \(errors.prefix(2).joined(separator: "; "))")
    }
}

/// The counts and durations of one run.
struct Plan {
    var corpusRecords = 100_000
    var rawRows: Int
    var intakeRecords: Int
    var latencySeconds: Double
    var deliveryRecords: Int
    var endToEndSeconds: Double
    /// Records of the part files `send` and the peer comparison load.
    var partRecords: Int
    var backlogRecords: Int
    var backlogWatchSeconds: Double
    var traceRequests: Int
    var lowRateRecords: Int

    init(quick: Bool, intakeRecords: Int?) {
        rawRows = quick ? 50_000 : 500_000
        self.intakeRecords = intakeRecords ?? (quick ? 50_000 : 1_000_000)
        latencySeconds = quick ? 2 : 10
        deliveryRecords = quick ? 100_000 : 1_000_000
        endToEndSeconds = quick ? 5 : 60
        partRecords = quick ? 200_000 : 2_000_000
        backlogRecords = quick ? 500_000 : 5_000_000
        backlogWatchSeconds = quick ? 1 : 3
        traceRequests = quick ? 1_000 : 10_000
        lowRateRecords = quick ? 100 : 500
        if quick { corpusRecords = 20_000 }
    }
}

/// The table being gathered, and the figures the targets are judged on.
final class Report {
    var table = Table(["measurement", "result", "detail"], alignments: [.left, .right, .left])
    var peaks: [(String, Int)] = []
    var intake8Full: Double?
    var send: Double?
    var peer: (agent: PeerComparison.Side?, peer: PeerComparison.Side?)?
    var p99: UInt64?
    var deliveryGzip: Double?
    var deliveryDistant: Double?
    var manyTables: Double?
    var traced: Double?
    var idleWakeups: Double?
    var endToEnd: (in: Double, out: Double)?
    var ready: (seconds: Double, pending: Int)?
    var lowRateBytes: Double?

    /// Runs one measurement; a failure becomes a table row instead of ending the bench.
    func measure(_ label: String, if selected: Bool = true, _ body: () throws -> Void) {
        guard selected else { return }
        progress(label)
        do { try body() } catch { table.add(label, "FAILED", "\(error)") }
    }

    func targets(raw: Double?, quick: Bool, backlog: Int) -> Table {
        var t = Table(["target", "required", "measured", "verdict"], alignments: [.left, .right, .right, .left])
        func verdict(_ met: Bool?) -> String { met.map { $0 ? "met" : "MISSED" } ?? "not measured" }
        t.add(
            "acked intake, 8 clients, full", "≥ 500,000 records/s",
            intake8Full.map { Format.grouped($0) } ?? "–", verdict(intake8Full.map { $0 >= 500_000 }))
        let ratio = intake8Full.flatMap { i in raw.map { i / $0 } }
        t.add(
            "  … relative to the raw limit", "≥ 1.70× raw", ratio.map { Format.fixed($0, 2) + "×" } ?? "–",
            verdict(ratio.map { $0 >= 1.7 }))
        let sendRatio = send.flatMap { s in raw.map { s / $0 } }
        t.add(
            "8 send processes, relative to the raw limit", "≥ 1.50× raw", sendRatio.map { Format.fixed($0, 2) + "×" } ?? "–",
            verdict(sendRatio.map { $0 >= 1.5 }))
        t.add(
            "ack p99 at 20,000 records/s offered", "≤ 5 ms", p99.map { Format.ms(nanos: $0) } ?? "–",
            verdict(p99.map { $0 <= 5_000_000 }))
        t.add(
            "delivery to the null emulator, gzip", "≥ 400,000 records/s", deliveryGzip.map { Format.grouped($0) } ?? "–",
            verdict(deliveryGzip.map { $0 >= 400_000 }))
        t.add(
            "delivery, API 150 ms away", "≥ 300,000 records/s", deliveryDistant.map { Format.grouped($0) } ?? "–",
            verdict(deliveryDistant.map { $0 >= 300_000 }))
        t.add(
            "200 tables × 50 rows, API 150 ms away", "≤ 2 s", manyTables.map { Format.fixed($0, 2) + " s" } ?? "–",
            verdict(manyTables.map { $0 <= 2 }))
        t.add(
            "one-row requests with a trace_id each, 150 ms away", "≤ 5 s", traced.map { Format.fixed($0, 2) + " s" } ?? "–",
            verdict(traced.map { $0 <= 5 }))
        t.add(
            "idle after those", "≤ 10 wake-ups/s", idleWakeups.map { Format.fixed($0, 1) } ?? "–",
            verdict(idleWakeups.map { $0 <= 10 }))
        t.add(
            "end to end, sustained (min of in, out)", "≥ 250,000 records/s",
            endToEnd.map { Format.grouped(min($0.in, $0.out)) } ?? "–",
            verdict(endToEnd.map { min($0.in, $0.out) >= 250_000 }))
        t.add(
            "disk writes, one acked record at a time (250/s)", "≤ 8,000 B/record", lowRateBytes.map { Format.grouped($0) } ?? "–",
            verdict(lowRateBytes.map { $0 <= 8_000 }))
        let peak = peaks.map(\.1).max()
        t.add(
            "RSS throughout (2–6)", "≤ 64.0 MiB", peak.map { Format.mib(kib: $0) } ?? "–",
            verdict(peak.map { $0 <= 64 * 1024 }))
        t.add(
            "ready with \(Format.grouped(ready?.pending ?? backlog)) pending\(quick ? " (full run: 5,000,000)" : "")", "≤ 1,000 ms",
            ready.map { "\(Format.fixed($0.seconds * 1000, 0)) ms" } ?? "–", verdict(ready.map { $0.seconds <= 1 }))
        let agent = peer?.agent
        let peerRatio = agent.flatMap { a in peer?.peer.map { a.recordsPerSecond / $0.recordsPerSecond } }
        t.add(
            "end to end vs Fluent Bit (records/s)", "≥ 2.00× Fluent Bit", peerRatio.map { Format.fixed($0, 2) + "×" } ?? "–",
            verdict(peerRatio.map { $0 >= 2 }))
        t.add(
            "  … CPU per record (agent)", "≤ 1.2 µs", agent.map { Format.fixed($0.cpuMicrosPerRecord, 2) + " µs" } ?? "–",
            verdict(agent.map { $0.cpuMicrosPerRecord <= 1.2 }))
        t.add(
            "  … peak RSS (agent)", "≤ 48.0 MiB", agent.map { Format.mib(kib: $0.peakRSSKiB) } ?? "–",
            verdict(agent.map { $0.peakRSSKiB <= 48 * 1024 }))
        return t
    }
}

Bench.main()
