import Foundation
import Logging
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

@Suite("Spool access", .serialized)
struct SpoolAccessTests {
    let directory: String

    init() throws {
        directory = try makeTemporaryDirectory("spool-access")
    }

    func mode(_ path: String) -> mode_t? {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o777 : nil
    }

    func group(_ path: String) -> gid_t? {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_gid : nil
    }

    /// A group other than the process's, to give the spool to.
    var otherGroup: gid_t? {
        ["daemon", "adm", "nogroup", "users"].lazy.compactMap { FileSystem.groupID(named: $0) }.first { $0 != getgid() }
    }

    /// Issue 17: SQLite makes a database 0644 under umask 022, so any local user could read every pending
    /// record; the spool, its WAL and its SHM are 0600 whatever the umask.
    @Test func aNewSpoolAndItsWALAndSHMAreReadableByTheOwnerOnlyWhateverTheUmask() throws {
        let path = directory + "/spool.db"
        let old = umask(0o022)
        defer { umask(old) }
        let writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test"))
        _ = writer
        for file in [path, path + "-wal", path + "-shm"] {
            #expect(mode(file) == 0o600, "\(file)")
        }
    }

    @Test func anExistingSpoolOthersCanReadIsNarrowedAndReported() throws {
        let path = directory + "/spool.db"
        do { _ = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, logger: Logger(label: "test")) }
        for file in SpoolAccess.files(ofSpoolAt: path) where FileManager.default.fileExists(atPath: file) {
            chmod(file, 0o644)
        }
        let changes = try SpoolAccess.ownerOnly.prepare(spoolAt: path)
        #expect(changes.map(\.path).contains(path))
        #expect(changes.allSatisfy { $0.oldMode == 0o644 && $0.newMode == 0o600 && $0.oldGroup == nil })
        #expect(mode(path) == 0o600)
        #expect(try SpoolAccess.ownerOnly.prepare(spoolAt: path).isEmpty, "a second pass changes nothing")
    }

    @Test func withAGroupTheSpoolIs0640AndBelongsToIt() throws {
        guard let gid = otherGroup, getuid() == 0 || getgroups(0, nil) > 0 else { return }
        let access = SpoolAccess(group: gid)
        let path = directory + "/spool.db"
        let old = umask(0o077)
        defer { umask(old) }
        let writer: SpoolWriter
        do {
            writer = try SpoolWriter(path: path, durability: .full, maxBytes: 1 << 30, access: access, logger: Logger(label: "test"))
        } catch {
            // Not root and not a member of the group: the error says so.
            #expect(error.message.contains("member"))
            return
        }
        #expect(mode(path) == 0o640 && group(path) == gid)
        withExtendedLifetime(writer) {
            #expect(mode(path + "-wal") == 0o640 && group(path + "-wal") == gid)
        }
        chmod(path, 0o644)
        chown(path, uid_t.max, getgid())
        let changes = try access.prepare(spoolAt: path)
        #expect(changes.first { $0.path == path } == .init(path: path, oldMode: 0o644, newMode: 0o640, oldGroup: getgid()))
    }

    @Test func aGroupIsANameOrANumericID() {
        #expect(FileSystem.groupID(named: "root") == 0)
        #expect(FileSystem.groupID(named: "0") == 0)
        #expect(FileSystem.groupID(named: "no-such-group-here") == nil)
    }

    @Test func anUnknownGroupIsAConfigurationErrorWithItsLine() {
        #expect(
            throws: ConfigurationError(
                .invalidValue, key: "spool.group", line: 3,
                "\"no-such-group-here\" is not a group on this machine (see `getent group`)")
        ) {
            try ConfigurationLoader.parse("[spool]\npath = \"/tmp/x.db\"\ngroup = \"no-such-group-here\"\n")
        }
    }
}
