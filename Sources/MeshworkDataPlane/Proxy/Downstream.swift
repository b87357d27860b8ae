import NIOCore
import NIOHTTP1

/// Where an exchange's request comes from and its response goes: an HTTP/1.1 connection
/// (the `ProxyHandler`'s own channel) or one stream of an HTTP/2 connection
/// (`HTTP2ServerStream`, which has no channel of its own). The handler speaks to either
/// through this one protocol.
protocol Downstream {
    func write(_ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>?)
    func flush()
    func close()
    /// Asks for more request bytes.
    func read()
    /// Whether more response bytes may be written now (response-body backpressure).
    var isWritable: Bool { get }
    /// The port the caller connected to.
    var localPort: Int { get }
    var remoteAddress: SocketAddress? { get }
}

/// An HTTP/1.1 connection as a downstream: its handler's context.
struct ChannelDownstream: Downstream {
    let context: ChannelHandlerContext

    func write(_ part: HTTPServerResponsePart, promise: EventLoopPromise<Void>?) {
        context.write(NIOAny(part), promise: promise)
    }

    func flush() { context.flush() }
    func close() { context.close(promise: nil) }
    func read() { context.read() }
    var isWritable: Bool { context.channel.isWritable }
    /// (A connection that came through the HTTP/2-or-1 sniffer may be a child channel.)
    var localPort: Int { (context.channel.parent ?? context.channel).localAddress?.port ?? 0 }
    var remoteAddress: SocketAddress? { context.channel.remoteAddress }
}

extension HTTP2ServerStream: Downstream {
    var localPort: Int { localAddress?.port ?? 0 }
}
