import Core
import Foundation
import Intake
import Spool

#if FUZZING
    import CFuzzerDriver
#endif

/// A libFuzzer target for everything intake parses from untrusted bytes: a line of the socket protocol,
/// a Stream API JSON body and an NDJSON body (the first input byte picks which).
///
/// Built for fuzzing (`Tests/Fuzz/run`: coverage instrumentation, AddressSanitizer, `-D FUZZING`, linked
/// with libFuzzer's `fuzzer_no_main` runtime) ``IntakeFuzzer`` hands its `main` to libFuzzer; built
/// normally it replays the files named on the command line (a corpus, or a crash to reproduce).
/// Whatever the bytes, the parser must not crash and must keep its contract, checked here with
/// `precondition` so that libFuzzer reports a breach as a crash:
/// - a refusal stores nothing and carries a status of 400, 413 or 422 and a message;
/// - an acceptance stores exactly the records it counts, one per line, each of which parses again to
///   exactly itself (valid, compact JSON).
enum IntakeContract {
    static let configuration: AgentConfiguration = {
        var config = AgentConfiguration()
        config.intake.defaultTable = "bronze.events"
        return config
    }()

    static let target = SpoolTarget(table: "bronze.events", mode: .append)

    static func check(_ input: UnsafeRawBufferPointer) {
        guard let selector = input.first else { return }
        let bytes = UnsafeRawBufferPointer(rebasing: input.dropFirst())
        var parser = IntakeLineParser(configuration: configuration)
        var batch = SpoolBatch()
        let result: Result<ParsedLine.Accepted, IntakeRejection>
        switch selector % 3 {
        case 0: result = parser.parse(line: bytes, into: &batch).result
        case 1: result = parser.parse(body: bytes, into: &batch).result
        default: result = parser.parse(ndjson: bytes, target: target, into: &batch)
        }
        switch result {
        case .failure(let rejection):
            precondition(batch.isEmpty, "a refused input stored records")
            precondition([400, 413, 422].contains(rejection.status), "unexpected status \(rejection.status)")
            precondition(!rejection.message.isEmpty, "a refusal without a message")
        case .success(let accepted):
            precondition(accepted.records == batch.totalRecords, "counted \(accepted.records), stored \(batch.totalRecords)")
            let reparser = IntakeLineParser(configuration: configuration)
            for records in batch.records {
                precondition(records.isEmpty || records.last == UInt8(ascii: "\n"), "stored records do not end with a newline")
                for record in records.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast() {
                    // Re-read as a row (NDJSON): as a line of the socket protocol, a row that happens to have
                    // "data" and "config" keys would be taken for an envelope.
                    var again = SpoolBatch()
                    let reparsed = Array(record).withUnsafeBytes {
                        reparser.parse(ndjson: $0, target: Self.target, into: &again)
                    }
                    guard case .success(let accepted) = reparsed, accepted.records == 1 else {
                        preconditionFailure("a stored record does not parse again as one row")
                    }
                    precondition(
                        again.records.first { !$0.isEmpty }.map { Array($0.dropLast()) } == Array(record), "a stored record is not stable")
                }
            }
        }
    }
}

/// libFuzzer's driver when built for fuzzing; a replayer of the files (or directories of files) named
/// on the command line otherwise.
@main
enum IntakeFuzzer {
    static func main() {
        #if FUZZING
            var argc = CommandLine.argc
            var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
            exit(
                LLVMFuzzerRunDriver(&argc, &argv) { data, size in
                    IntakeContract.check(UnsafeRawBufferPointer(start: data, count: size))
                    return 0
                })
        #else
            let paths = CommandLine.arguments.dropFirst().flatMap(files(in:))
            for path in paths {
                guard let data = FileManager.default.contents(atPath: path) else {
                    FileHandle.standardError.write(Data("cannot read \(path)\n".utf8))
                    exit(1)
                }
                data.withUnsafeBytes { IntakeContract.check($0) }
            }
            print("\(paths.count) inputs replayed, no failure")
        #endif
    }

    static func files(in path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.sorted().map { path + "/" + $0 }
    }
}
