/// A Stream API table name: `namespace.table` or `LAKE.namespace.table`.
///
/// Each part is an identifier: a letter or underscore, then letters, digits or underscores.
public enum TableName {
    /// Why `name` is not a valid table name, or `nil` when it is.
    public static func problem(with name: String) -> String? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3 else {
            return "table \"\(name)\" must be \"namespace.table\" or \"LAKE.namespace.table\""
        }
        for part in parts where !isIdentifier(part) {
            return "table \"\(name)\" has an invalid part \"\(part)\" (letters, digits and _ only, not starting with a digit)"
        }
        return nil
    }

    public static func isValid(_ name: String) -> Bool { problem(with: name) == nil }

    package static func isIdentifier(_ part: Substring) -> Bool {
        guard let first = part.utf8.first, first == UInt8(ascii: "_") || isLetter(first) else { return false }
        return part.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isLetter($0) || ($0 >= 48 && $0 <= 57) }
    }

    private static func isLetter(_ c: UInt8) -> Bool { (c | 0x20) >= 97 && (c | 0x20) <= 122 }
}
