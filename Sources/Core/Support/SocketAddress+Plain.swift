import NIOCore

extension SocketAddress {
    /// The address as operators write it in the configuration: `127.0.0.1:8787`, `[::1]:8787`, or a Unix
    /// socket's path (NIO's own description, `[IPv4]127.0.0.1/127.0.0.1:8787`, is for debugging).
    package var plainDescription: String {
        if let path = pathname { return path }
        guard let ip = ipAddress, let port else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
