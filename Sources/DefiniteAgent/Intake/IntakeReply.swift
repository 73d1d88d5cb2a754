import NIOCore

/// The reply lines of the intake protocol.
///
/// - Acknowledged and durable: `{"ack":"<id>","ok":true,"accepted":<rows>}`
/// - Refused, with ack: `{"ack":"<id>","ok":false,"status":<code>,"error":"<message>"}`
/// - Refused, without ack: `{"ok":false,"line":<n>,"status":<code>,"error":"<message>"}`
/// - Accepted without ack: no reply.
enum IntakeReply {
    static func write(ack: String?, line: Int, result: Result<Int, IntakeRejection>, to buffer: inout ByteBuffer) {
        switch (ack, result) {
        case (let ack?, .success(let records)):
            // The common reply, one per record at full speed: written straight into the buffer.
            buffer.writeStaticString("{\"ack\":")
            writeQuoted(ack, to: &buffer)
            buffer.writeStaticString(",\"ok\":true,\"accepted\":")
            buffer.writeString(String(records))
            buffer.writeStaticString("}\n")
        case (let ack?, .failure(let rejection)):
            buffer.writeString("{\"ack\":\(JSONCompactor.quote(ack)),\"ok\":false,\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n")
        case (nil, .failure(let rejection)):
            buffer.writeString("{\"ok\":false,\"line\":\(line),\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n")
        case (nil, .success):
            break
        }
    }

    /// Writes `text` as a JSON string. Ack ids are short and plain: they are copied as they are unless a
    /// byte needs escaping.
    static func writeQuoted(_ text: String, to buffer: inout ByteBuffer) {
        var text = text
        let plain = text.withUTF8 { bytes in
            guard !bytes.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return false }
            buffer.writeInteger(UInt8(ascii: "\""))
            buffer.writeBytes(bytes)
            buffer.writeInteger(UInt8(ascii: "\""))
            return true
        }
        if !plain { buffer.writeString(JSONCompactor.quote(text)) }
    }
}
