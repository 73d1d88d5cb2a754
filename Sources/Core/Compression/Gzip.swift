import CLibDeflate
import CZlib

/// gzip (RFC 1952): request bodies compressed with libdeflate, bodies received decompressed with zlib.
///
/// libdeflate compresses a whole buffer at once; at the same level it takes about 40 % less CPU than
/// zlib's streaming deflate and its output is as small or smaller (BENCHMARKS.md, issue 19).
package enum Gzip {
    /// Why compressing or decompressing failed.
    package struct Error: Swift.Error, CustomStringConvertible {
        /// The closed set of reasons.
        package enum Kind: Sendable, Equatable {
            /// The input is not gzip data, or is cut short.
            case invalidData
            /// Bytes after the end of the gzip data that do not start another member (`code`: how many).
            case trailingData
            /// The decompressed data would pass the caller's limit.
            case overLimit
            /// The library could not work (no memory, a bad level).
            case library
        }

        package var kind: Kind
        /// zlib's (or libdeflate's) status, for the message.
        package var code: Int32

        package init(_ kind: Kind, code: Int32) {
            self.kind = kind
            self.code = code
        }

        package var description: String {
            switch kind {
            case .invalidData: "not valid gzip data (zlib status \(code))"
            case .trailingData: "\(code) bytes after the end of the gzip data that do not start another gzip member"
            case .overLimit: "the decompressed data passes its limit"
            case .library: "the compression library failed (status \(code))"
            }
        }
    }

    /// Compresses the concatenation of `parts` into one gzip member in `output` (replacing its contents).
    /// One part (an NDJSON body) is compressed where it lies; several are joined first, in memory that is
    /// freed on return.
    package static func compress(parts: [UnsafeRawBufferPointer], level: Int, into output: inout [UInt8]) throws(Error) {
        let present = parts.filter { $0.count > 0 }
        guard present.count > 1 else {
            return try compress(present.first ?? UnsafeRawBufferPointer(start: nil, count: 0), level: level, into: &output)
        }
        let total = present.reduce(0) { $0 + $1.count }
        let joined = [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
            var offset = 0
            for part in present {
                UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[offset..<(offset + part.count)]).copyMemory(
                    from: part)
                offset += part.count
            }
            count = total
        }
        // (withUnsafeBytes rethrows untyped errors: the result carries the typed one out.)
        try joined.withUnsafeBytes { input in Result { () throws(Error) in try compress(input, level: level, into: &output) } }.get()
    }

    /// Compresses `input` at `level` (1–9) into a gzip member.
    package static func compress(_ input: [UInt8], level: Int) throws(Error) -> [UInt8] {
        var output: [UInt8] = []
        try input.withUnsafeBytes { raw in Result { () throws(Error) in try compress(raw, level: level, into: &output) } }.get()
        return output
    }

    private static func compress(_ input: UnsafeRawBufferPointer, level: Int, into output: inout [UInt8]) throws(Error) {
        guard let compressor = libdeflate_alloc_compressor(Int32(level)) else { throw Error(.library, code: Z_MEM_ERROR) }
        defer { libdeflate_free_compressor(compressor) }
        // A quarter of the input first (JSON compresses far better than that), so that only the pages
        // written are ever touched; the worst case (more than the input) only when that did not fit.
        var capacity = max(1 << 16, input.count / 4)
        while true {
            let attempt = capacity
            let result = [UInt8](unsafeUninitializedCapacity: attempt) { buffer, count in
                count = libdeflate_gzip_compress(compressor, input.baseAddress, input.count, buffer.baseAddress, attempt)
            }
            if !result.isEmpty {
                output = result
                return
            }
            let bound = libdeflate_gzip_compress_bound(compressor, input.count)
            guard attempt < bound else { throw Error(.library, code: Z_BUF_ERROR) }
            capacity = bound
        }
    }

    /// Decompresses gzip data: every member of it, one after the other, as RFC 1952 allows (`cat a.gz
    /// b.gz`, a file appended to). Anything else after a member is an error, never ignored (used by tests and
    /// the HTTP intake).
    package static func decompress(_ input: [UInt8], limit: Int = .max) throws -> [UInt8] {
        var stream = z_stream()
        let initialized = czlib_inflate_init_gzip(&stream)
        guard initialized == Z_OK else { throw Error(.library, code: initialized) }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        try input.withUnsafeBytes { (inRaw: UnsafeRawBufferPointer) throws in
            stream.next_in = UnsafeMutablePointer(mutating: inRaw.baseAddress?.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(inRaw.count)
            while true {
                try inflateMember(&stream, chunk: &chunk, into: &output, limit: limit)
                guard stream.avail_in > 0, let next = stream.next_in else { break }
                guard stream.avail_in >= 2, next[0] == 0x1f, next[1] == 0x8b else {
                    throw Error(.trailingData, code: Int32(clamping: stream.avail_in))
                }
                inflateReset(&stream)
            }
        }
        return output
    }

    /// Inflates the member `stream` is at to its end, appending to `output`.
    private static func inflateMember(_ stream: inout z_stream, chunk: inout [UInt8], into output: inout [UInt8], limit: Int) throws {
        var status: Int32 = Z_OK
        repeat {
            let produced = chunk.withUnsafeMutableBytes { outRaw -> Int in
                stream.next_out = outRaw.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(outRaw.count)
                status = inflate(&stream, Z_NO_FLUSH)
                return outRaw.count - Int(stream.avail_out)
            }
            guard status == Z_OK || status == Z_STREAM_END else {
                throw Error(status == Z_MEM_ERROR ? .library : .invalidData, code: status)
            }
            output.append(contentsOf: chunk[0..<produced])
            guard output.count <= limit else { throw Error(.overLimit, code: Z_BUF_ERROR) }
            if produced == 0 && stream.avail_in == 0 && status != Z_STREAM_END { throw Error(.invalidData, code: Z_DATA_ERROR) }
        } while status != Z_STREAM_END
    }
}
