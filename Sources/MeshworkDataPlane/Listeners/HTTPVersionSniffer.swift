import NIOCore

/// Tells HTTP/2 with prior knowledge (h2c) from HTTP/1.x on a cleartext connection by its
/// first bytes: HTTP/2 always opens with the fixed client preface (RFC 9113 section 3.4).
/// Once it knows, it builds the rest of the pipeline, replays what it read, and leaves.
/// With `classify`, it tells other protocols apart the same way (TLS from plaintext).
package final class HTTPVersionSniffer: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias Configure = (_ isHTTP2: Bool, _ channel: any Channel) throws -> Void
    /// true or false once the bytes read so far decide; nil while more are needed.
    package typealias Classify = (ByteBufferView) -> Bool?

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private var buffered: ByteBuffer?
    private let configure: Configure
    private let classify: Classify
    /// A connection that has not said which protocol it speaks by then is closed: until
    /// it does, no header timer runs, and silent connections would hold every place of
    /// the listener's `maxConnections`.
    private let deadline: TimeAmount
    private var timer: Scheduled<Void>?
    static let defaultDeadline = TimeAmount.seconds(10)

    package init(deadline: TimeAmount = HTTPVersionSniffer.defaultDeadline, configure: @escaping Configure) {
        self.configure = configure
        self.deadline = deadline
        self.classify = { bytes in
            let count = min(bytes.count, Self.preface.count)
            guard bytes.prefix(count).elementsEqual(Self.preface.prefix(count)) else { return false }
            return count == Self.preface.count ? true : nil
        }
    }

    package init(
        deadline: TimeAmount = HTTPVersionSniffer.defaultDeadline,
        classify: @escaping Classify,
        configure: @escaping Configure
    ) {
        self.configure = configure
        self.classify = classify
        self.deadline = deadline
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: deadline) {
            context.close(promise: nil)
        }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    /// A TLS connection opens with a handshake record (content type 22).
    static func isTLS(_ bytes: ByteBufferView) -> Bool? { bytes.first.map { $0 == 0x16 } }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffered == nil {
            buffered = incoming
        } else {
            buffered!.writeBuffer(&incoming)
        }
        guard let bytes = buffered, let decision = classify(bytes.readableBytesView) else { return }
        decide(isHTTP2: decision, context: context)
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
