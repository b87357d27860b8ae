import Foundation
import NIOCore

/// A port on 127.0.0.1 that is bound but never listens: connecting to it is refused for as
/// long as this lives, and no other process can take it (unlike a port just released).
///
/// The address goes in through NIO's `SocketAddress` and the port is read back from the raw
/// bytes of `sockaddr_in` (family, then the port in network order): no member of the C
/// structs is touched, whose defining module the compiler may attribute to NIO's C shims.
final class RefusingPort {
    private let descriptor: Int32
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 0)
        let bound = address.withSockAddr { bind(descriptor, $0, socklen_t($1)) }
        var raw = [UInt8](repeating: 0, count: 128)
        var length = socklen_t(raw.count)
        let named = raw.withUnsafeMutableBytes { bytes in
            getsockname(descriptor, bytes.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard bound == 0, named == 0, length >= 4 else {
            close(descriptor)
            throw POSIXError(.EADDRNOTAVAIL)
        }
        self.descriptor = descriptor
        port = Int(raw[2]) << 8 | Int(raw[3])
    }

    deinit { close(descriptor) }
}
