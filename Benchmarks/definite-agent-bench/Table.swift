import Foundation

/// A plain-text table: a header, rows of cells, optional section breaks; columns padded to their widest
/// cell, the first column left-aligned, the others as given.
struct Table {
    enum Alignment { case left, right }

    private let headers: [String]
    private let alignments: [Alignment]
    private var rows: [[String]?] = []  // nil: a separator line

    init(_ headers: [String], alignments: [Alignment]? = nil) {
        self.headers = headers
        self.alignments = alignments ?? [.left] + Array(repeating: .right, count: headers.count - 1)
    }

    mutating func add(_ cells: String...) {
        rows.append(cells + Array(repeating: "", count: max(0, headers.count - cells.count)))
    }

    mutating func separator() { rows.append(nil) }

    func render() -> String {
        var widths = headers.map(\.count)
        for case let row? in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return alignments[i] == .left ? cell + pad : pad + cell
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        var out = [line(headers), rule]
        for row in rows { out.append(row.map(line) ?? rule) }
        return out.joined(separator: "\n")
    }
}
