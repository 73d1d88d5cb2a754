import Glibc

extension Double {
    /// The number with `digits` decimals, as printf's `%.<digits>f` writes it (`1.5.fixed(3)` is `"1.500"`).
    package func fixed(_ digits: Int) -> String {
        // printf itself (`String(format:)` is Foundation's): 320 bytes hold any double's integer part.
        var buffer = [CChar](repeating: 0, count: 352)
        let precision = Int32(min(max(digits, 0), 24))
        let length = withVaList([precision, self]) { vsnprintf(&buffer, buffer.count, "%.*f", $0) }
        return String(decoding: buffer.prefix(max(0, min(Int(length), buffer.count - 1))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension String {
    /// The string followed by spaces up to `width` characters (as it is when already that long).
    package func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

extension Duration {
    /// The duration as the log shows it, to a tenth of a second: `"9.9s"` (not `"9.999682366000002 seconds"`).
    package var loggedSeconds: String {
        (Double(components.seconds) + Double(components.attoseconds) / 1e18).fixed(1) + "s"
    }
}
