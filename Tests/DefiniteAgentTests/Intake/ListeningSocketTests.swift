import Foundation
import Testing

@testable import Core
@testable import Daemon
@testable import Delivery
@testable import Intake
@testable import Operations
@testable import Spool

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Listening sockets")
struct ListeningSocketTests {
    let directory: String
    let none = PassedSockets([])

    init() throws {
        directory = NSTemporaryDirectory() + "listen-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func unix(_ path: String, kind: SocketKind = .stream, passed: PassedSockets? = nil) throws(StartupError) -> ListeningSocket {
        try ListeningSocket.unix(
            path: path, kind: kind, mode: 0o660, backlog: 16, part: "intake socket \(path)", passedSockets: passed ?? none)
    }

    func isCloseOnExec(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) & FD_CLOEXEC != 0 }

    /// Whether a socket of `kind` at `path` takes a connection.
    func answers(_ path: String, kind: SocketKind) -> Bool {
        let fd = socket(AF_UNIX, kind.socketType | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        return SocketPath.withAddress(of: path) { connect(fd, $0, $1) == 0 } ?? false
    }

    @Test func aSocketTheDaemonBindsIsCloseOnExecListeningAndHasItsMode() throws {
        let path = directory + "/a.sock"
        let socket = try unix(path)
        defer { socket.discard() }
        #expect(isCloseOnExec(socket.fd))
        #expect(SocketKind.stream.isReady(socket.fd))
        #expect(answers(path, kind: .stream))
        #expect(socket.ownedPath == path)
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o660)
    }

    @Test func discardingClosesAndRemovesThePath() throws {
        let path = directory + "/a.sock"
        try unix(path).discard()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func aStaleSocketFileIsReplacedAndAMissingDirectoryCreated() throws {
        let path = directory + "/sub/dir/a.sock"
        let first = try unix(path)
        close(first.fd)  // a crash: the file stays, nothing listens
        let second = try unix(path)
        defer { second.discard() }
        #expect(answers(path, kind: .stream))
    }

    @Test(arguments: [SocketKind.stream, .datagram])
    func aPathSomethingListensOnIsInUseAndLeftAlone(kind: SocketKind) throws {
        let path = directory + "/busy.sock"
        let other = try unix(path, kind: kind)
        defer { other.discard() }
        let error = #expect(throws: StartupError.self) { try unix(path, kind: kind) }
        #expect(error?.code == .pathInUse)
        #expect(error?.description.contains("another process is listening on it") == true)
        #expect(error?.description.contains(path) == true)
        #expect(answers(path, kind: kind), "the other socket keeps its path")
    }

    /// A live socket of the other kind refuses the connection with EPROTOTYPE, not ECONNREFUSED: it was
    /// taken for stale and unlinked (another program's socket, or the daemon's own HTTP socket when
    /// `datagram_socket` named the same path), and its clients found nothing there.
    @Test(arguments: [SocketKind.stream, .datagram])
    func aLiveSocketOfTheOtherKindIsInUseAndLeftAlone(kind: SocketKind) throws {
        let path = directory + "/other-kind.sock"
        let other = try unix(path, kind: kind == .stream ? .datagram : .stream)
        defer { other.discard() }
        let error = #expect(throws: StartupError.self) { try unix(path, kind: kind) }
        #expect(error?.code == .pathInUse)
        #expect(answers(path, kind: kind == .stream ? .datagram : .stream), "the other socket keeps its path")
    }

    @Test func aPathHeldByASocketPassedToThisProcessSaysSo() throws {
        let path = directory + "/passed.sock"
        let held = try unix(path)
        defer { held.discard() }
        let passed = PassedSockets([PassedSocket(fd: 7, name: "foo", path: path), PassedSocket(fd: 8, name: "bar", path: nil)])
        let error = #expect(throws: StartupError.self) { try unix(path, passed: passed) }
        #expect(error?.code == .pathHeldByPassedSocket)
        #expect(error?.description.contains("fd 7 named \"foo\"") == true)
        #expect(error?.description.contains("FileDescriptorName=intake") == true)
    }

    @Test func aFileThatIsNotASocketIsNeverRemoved() throws {
        let path = directory + "/file"
        try Data("keep".utf8).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: StartupError.self) { try unix(path) }
        #expect(error?.code == .pathUnusable)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep")
    }

    @Test func aDirectoryThatCannotBeMadeNamesItAndTheReason() throws {
        let file = directory + "/plain"
        try Data().write(to: URL(fileURLWithPath: file))
        let error = #expect(throws: StartupError.self) { try unix(file + "/sub/a.sock") }
        #expect(error?.code == .pathUnusable)
        #expect(error?.description.contains("cannot create its directory \(file)/sub") == true)
    }

    @Test func aPathTooLongForASocketAddressIsRefused() {
        let error = #expect(throws: StartupError.self) { try unix(directory + "/" + String(repeating: "x", count: 120)) }
        #expect(error?.code == .pathUnusable)
    }

    @Test func aTCPSocketIsCloseOnExecAndABusyPortNamesThePortAndTheReason() throws {
        let first = try ListeningSocket.tcp(host: "127.0.0.1", port: 0, backlog: 16, part: "metrics endpoint 127.0.0.1:0")
        defer { first.discard() }
        #expect(isCloseOnExec(first.fd))
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(first.fd, $0, &length) }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let error = #expect(throws: StartupError.self) {
            try ListeningSocket.tcp(host: "127.0.0.1", port: port, backlog: 16, part: "metrics endpoint 127.0.0.1:\(port)")
        }
        #expect(error?.code == .addressUnusable)
        #expect(error?.errno == EADDRINUSE)
        #expect(error?.description == "cannot start the metrics endpoint 127.0.0.1:\(port): port \(port) is in use: Address already in use")
    }

    @Test func aPassedSocketOfTheWrongKindIsRefused() throws {
        let path = directory + "/d.sock"
        let datagram = try unix(path, kind: .datagram)
        defer { datagram.discard() }
        let error = #expect(throws: StartupError.self) {
            try ListeningSocket.passed(PassedSocket(fd: datagram.fd, name: "intake", path: path), kind: .stream, part: "intake socket")
        }
        #expect(error?.code == .passedSocketUnusable)
        #expect(
            try ListeningSocket.passed(PassedSocket(fd: datagram.fd, name: "datagram", path: path), kind: .datagram, part: "x").ownedPath
                == nil)
    }
}
