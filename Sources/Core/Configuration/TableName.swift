/// A Stream API table name: `namespace.table` or `LAKE.namespace.table`, two spellings of one table.
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
        if parts.count == 3, parts[0].uppercased() != "LAKE" {
            return
                "table \"\(name)\" names the catalog \"\(parts[0])\"; the Stream API writes to LAKE only: use \"\(parts[1]).\(parts[2])\""
        }
        return nil
    }

    /// The one spelling of a valid `name` the agent keeps: `namespace.table`, without `LAKE.`. Both
    /// spellings are one table, so they share one queue (merge order) and one `[[table]]` entry.
    public static func canonical(_ name: String) -> String {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 3 && parts[0].uppercased() == "LAKE" ? "\(parts[1]).\(parts[2])" : name
    }

    /// What two names of one lake table have in common: the canonical name with its ASCII letters in lower
    /// case. The lake (DuckLake) does not tell `bronze.Users` from `bronze.users`, so neither do the
    /// `[[table]]` defaults: a merge table's entry spelt one way once left requests spelt the other way
    /// appending, three rows for one key. Queues keep the name as written.
    public static func caseFolded(_ name: String) -> String { canonical(name).lowercased() }

    public static func isValid(_ name: String) -> Bool { problem(with: name) == nil }

    package static func isIdentifier(_ part: Substring) -> Bool {
        guard let first = part.utf8.first, first == UInt8(ascii: "_") || isLetter(first) else { return false }
        return part.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isLetter($0) || ($0 >= 48 && $0 <= 57) }
    }

    private static func isLetter(_ c: UInt8) -> Bool { (c | 0x20) >= 97 && (c | 0x20) <= 122 }
}
