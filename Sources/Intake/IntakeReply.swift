import Core
import NIOCore

/// The reply lines of the intake protocol.
///
/// - Acknowledged and durable: `{"ack":"<id>","ok":true,"accepted":<rows>}`
/// - Refused, with ack: `{"ack":"<id>","ok":false,"status":<status>,"code":"<code>","error":"<message>"}`
/// - Refused, without ack: `{"ok":false,"line":<n>,"status":<status>,"code":"<code>","error":"<message>"}`
/// - Accepted without ack: no reply.
/// - The connection refused before any line (a peer not allowed): `{"ok":false,"status":…,"code":…,"error":…}`.
///
/// The ack id is given as the bytes between its quotes in the request, exactly as sent: they were
/// validated as a JSON string when the line was parsed, so they are written back as they are and the
/// writer decodes the same id it sent (escapes, if it used any, come back as it wrote them).
enum IntakeReply {
    static func write(ack: UnsafeRawBufferPointer?, line: Int, result: Result<Int, IntakeRejection>, to buffer: inout ByteBuffer) {
        switch (ack, result) {
        case (let ack?, .success(let records)):
            // The common reply, one per record at full speed: three writes into the buffer.
            buffer.writeStaticString("{\"ack\":\"")
            buffer.writeBytes(ack)
            if records == 1 {
                buffer.writeStaticString("\",\"ok\":true,\"accepted\":1}\n")
            } else {
                buffer.writeStaticString("\",\"ok\":true,\"accepted\":")
                buffer.writeString(String(records))
                buffer.writeStaticString("}\n")
            }
        case (let ack?, .failure(let rejection)):
            buffer.writeStaticString("{\"ack\":\"")
            buffer.writeBytes(ack)
            buffer.writeString(
                "\",\"ok\":false,\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n"
            )
        case (nil, .failure(let rejection)):
            buffer.writeString(
                "{\"ok\":false,\"line\":\(line),\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n"
            )
        case (nil, .success):
            break
        }
    }

    /// The one line a connection gets when it is refused as a whole, before any of its lines is read.
    static func write(connectionRefusal rejection: IntakeRejection, to buffer: inout ByteBuffer) {
        buffer.writeString(
            "{\"ok\":false,\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n"
        )
    }
}
