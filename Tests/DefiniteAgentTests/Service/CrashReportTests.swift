import CAgentSupport
import Glibc
import Testing

/// The line the crash handler writes to the journal: the release binary has no backtracer, so it is all an
/// operator has to report a crash with.
@Suite("Crash report")
struct CrashReportTests {
    func describe(
        _ signo: Int32, sender: Int = 0, address: UInt = 0x5555_1234, offset: UInt = 0x1234, thread: String = "delivery-1",
        capacity: Int = 512
    ) -> String {
        var buffer = [CChar](repeating: 0x7F, count: capacity)
        let length = cagent_describe_crash(&buffer, UInt(capacity), signo, sender, address, offset, thread, "abc1234")
        let text = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(buffer[Int(length)] == 0, "the line is NUL-terminated")
        return text
    }

    @Test func aFaultNamesTheSignalTheThreadAndWhereToLookInTheBinary() {
        #expect(
            describe(SIGILL)
                == "definite-agent crashed: SIGILL (a failed runtime check: an overflow, a forced unwrap of nil, an index out of range) in thread \"delivery-1\" at 0x55551234, offset 0x1234 in the executable (commit abc1234; `addr2line -f -C -e <its unstripped binary> 0x1234` names the function). Please report this line and the log before it.\n"
        )
        #expect(describe(SIGSEGV, offset: 0).contains("at 0x55551234, outside the executable (a library; commit abc1234)"))
    }

    @Test func aSignalFromAnotherProcessNamesTheSender() {
        #expect(
            describe(SIGABRT, sender: 4242)
                == "definite-agent: ended by SIGABRT from process 4242 (systemd sends it when the watchdog expires; or kill -ABRT)\n")
        #expect(describe(SIGQUIT, sender: 7) == "definite-agent: ended by SIGQUIT from process 7\n")
    }

    @Test func aShortBufferGetsAsMuchAsFits() {
        #expect(describe(SIGILL, capacity: 16) == "definite-agent ")
    }
}
