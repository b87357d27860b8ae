import NIOCore
import NIOPosix

/// Endpoint addresses as discovery delivers them. An IP literal (what instances register)
/// is parsed in place; a hostname is resolved by getaddrinfo on NIO's blocking thread pool,
/// never on Swift's cooperative pool, where one slow DNS server would stall every task of
/// the process (the watch, renewal, health checks).
enum AddressResolver {
    static func resolve(_ host: String, port: Int) async throws -> SocketAddress {
        if let literal = try? SocketAddress(ipAddress: host, port: port) { return literal }
        return try await NIOThreadPool.singleton.runIfActive {
            try SocketAddress.makeAddressResolvingHost(host, port: port)
        }
    }
}
