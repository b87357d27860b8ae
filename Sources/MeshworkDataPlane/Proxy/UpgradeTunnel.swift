import NIOCore
import NIOHTTP1

/// An HTTP/1.1 `Upgrade` (WebSocket) honoured with `101 Switching Protocols`: once the
/// codecs have finished with their current bytes, the HTTP handlers of both connections
/// give way to a byte splice (`GlueHandler`).
enum UpgradeTunnel {
    /// The `101` as it goes to the client: hop-by-hop fields out, the upgrade named again.
    static func responseHead(_ head: HTTPResponseHead) -> HTTPResponseHead {
        var out = head
        let protocols = head.headers[canonicalForm: "upgrade"].joined(separator: ", ")
        ProxyHandler.removeHopByHop(&out.headers)
        out.headers.add(name: "connection", value: "upgrade")
        out.headers.add(name: "upgrade", value: protocols)
        return out
    }

    /// Replaces the HTTP handlers of the downstream connection (`context` is its
    /// `ProxyHandler`'s) and of `upstream` with a splice, on the next loop tick.
    static func splice(_ context: ChannelHandlerContext, with upstream: any Upstream) {
        context.eventLoop.assumeIsolated().execute {
            let downstreamGlue = GlueHandler()
            let upstreamGlue = GlueHandler()
            do {
                try upstream.becomeTunnel(glue: upstreamGlue)
                let pipeline = context.pipeline.syncOperations
                try pipeline.addHandler(downstreamGlue)
                func remove<Handler: RemovableChannelHandler>(_ type: Handler.Type) {
                    if let handlerContext = try? pipeline.context(handlerType: type) {
                        pipeline.removeHandler(context: handlerContext, promise: nil)
                    }
                }
                remove(HTTPServerPipelineHandler.self)
                remove(NIOHTTPResponseHeadersValidator.self)
                remove(HTTPServerUpgradeHandler.self)
                pipeline.removeHandler(context: context, promise: nil)
                remove(HTTPResponseEncoder.self)
                // Last: bytes the decoder read past the request head go on to the glue.
                remove(ByteToMessageHandler<HTTPRequestDecoder>.self)
                GlueHandler.pair(downstreamGlue, upstreamGlue)
            } catch {
                upstream.close()
                context.close(promise: nil)
            }
        }
    }
}
