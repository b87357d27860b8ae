import NIOCore

/// Tells HTTP/2 with prior knowledge (h2c) from HTTP/1.x on a cleartext connection by its
/// first bytes: HTTP/2 always opens with the fixed client preface (RFC 9113 section 3.4).
/// Once it knows, it builds the rest of the pipeline, replays what it read, and leaves.
package final class HTTPVersionSniffer: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias Configure = (_ isHTTP2: Bool, _ channel: any Channel) throws -> Void

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private var buffered: ByteBuffer?
    private let configure: Configure

    package init(configure: @escaping Configure) {
        self.configure = configure
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffered == nil {
            buffered = incoming
        } else {
            buffered!.writeBuffer(&incoming)
        }
        guard let bytes = buffered else { return }
        let count = min(bytes.readableBytes, Self.preface.count)
        let matches = bytes.readableBytesView.prefix(count).elementsEqual(Self.preface.prefix(count))
        if !matches {
            decide(isHTTP2: false, context: context)
        } else if count == Self.preface.count {
            decide(isHTTP2: true, context: context)
        }
    }

    private func decide(isHTTP2: Bool, context: ChannelHandlerContext) {
        do {
            try configure(isHTTP2, context.channel)
        } catch {
            context.close(promise: nil)
            return
        }
        if let bytes = buffered {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
