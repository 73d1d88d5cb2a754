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
            buffer.writeString("{\"ack\":\(JSONCompactor.quote(ack)),\"ok\":true,\"accepted\":\(records)}\n")
        case (let ack?, .failure(let rejection)):
            buffer.writeString("{\"ack\":\(JSONCompactor.quote(ack)),\"ok\":false,\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n")
        case (nil, .failure(let rejection)):
            buffer.writeString("{\"ok\":false,\"line\":\(line),\"status\":\(rejection.status),\"code\":\"\(rejection.code)\",\"error\":\(JSONCompactor.quote(rejection.message))}\n")
        case (nil, .success):
            break
        }
    }
}
