import CZlib

/// gzip (RFC 1952) compression of a request body with zlib.
enum Gzip {
    struct Error: Swift.Error, CustomStringConvertible {
        var code: Int32
        var description: String { "zlib error \(code)" }
    }

    /// Compresses the concatenation of `parts` into one gzip member in `output` (replacing its contents,
    /// reusing its capacity), without ever joining the parts in memory.
    static func compress(parts: [UnsafeRawBufferPointer], level: Int, into output: inout [UInt8]) throws(Error) {
        var stream = z_stream()
        let initialized = czlib_deflate_init_gzip(&stream, Int32(level))
        guard initialized == Z_OK else { throw Error(code: initialized) }
        defer { deflateEnd(&stream) }
        // Start at a quarter of the input (JSON compresses far better than that) and grow if needed,
        // rather than reserving deflateBound, which is larger than the input itself.
        let total = parts.reduce(0) { $0 + $1.count }
        if output.count < max(1 << 16, total / 4) { output = [UInt8](repeating: 0, count: max(1 << 16, total / 4)) }
        var produced = 0
        for (index, part) in parts.enumerated() {
            let flush = index == parts.count - 1 ? Z_FINISH : Z_NO_FLUSH
            stream.next_in = UnsafeMutablePointer(mutating: part.baseAddress?.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(part.count)
            while true {
                if produced == output.count { output.append(contentsOf: repeatElement(0, count: output.count)) }
                let status = output.withUnsafeMutableBytes { outRaw -> Int32 in
                    stream.next_out = outRaw.baseAddress!.assumingMemoryBound(to: Bytef.self) + produced
                    stream.avail_out = uInt(outRaw.count - produced)
                    let status = deflate(&stream, flush)
                    produced = outRaw.count - Int(stream.avail_out)
                    return status
                }
                if status == Z_STREAM_END { break }
                guard status == Z_OK || status == Z_BUF_ERROR else { throw Error(code: status) }
                // Done with this part once zlib took all of it and still had room to write.
                if stream.avail_in == 0 && stream.avail_out > 0 && flush == Z_NO_FLUSH { break }
            }
        }
        output.removeSubrange(produced...)
    }

    /// Compresses `input` at `level` (1–9) into a gzip member.
    static func compress(_ input: [UInt8], level: Int) throws(Error) -> [UInt8] {
        var stream = z_stream()
        let initialized = czlib_deflate_init_gzip(&stream, Int32(level))
        guard initialized == Z_OK else { throw Error(code: initialized) }
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(input.count))) + 32)
        let result = input.withUnsafeBytes { inRaw in
            output.withUnsafeMutableBytes { outRaw -> Int32 in
                stream.next_in = UnsafeMutablePointer(mutating: inRaw.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(inRaw.count)
                stream.next_out = outRaw.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(outRaw.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard result == Z_STREAM_END else { throw Error(code: result) }
        output.removeSubrange(Int(stream.total_out)...)
        return output
    }

    /// Decompresses a gzip member (used by tests and the HTTP intake).
    static func decompress(_ input: [UInt8], limit: Int = .max) throws -> [UInt8] {
        var stream = z_stream()
        let initialized = czlib_inflate_init_auto(&stream)
        guard initialized == Z_OK else { throw Error(code: initialized) }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var status: Int32 = Z_OK
        try input.withUnsafeBytes { (inRaw: UnsafeRawBufferPointer) throws in
            stream.next_in = UnsafeMutablePointer(mutating: inRaw.baseAddress?.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(inRaw.count)
            repeat {
                let produced = chunk.withUnsafeMutableBytes { outRaw -> Int in
                    stream.next_out = outRaw.baseAddress?.assumingMemoryBound(to: Bytef.self)
                    stream.avail_out = uInt(outRaw.count)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return outRaw.count - Int(stream.avail_out)
                }
                guard status == Z_OK || status == Z_STREAM_END else { throw Error(code: status) }
                output.append(contentsOf: chunk[0..<produced])
                guard output.count <= limit else { throw Error(code: Z_BUF_ERROR) }
                if produced == 0 && stream.avail_in == 0 && status != Z_STREAM_END { throw Error(code: Z_DATA_ERROR) }
            } while status != Z_STREAM_END
        }
        return output
    }
}
