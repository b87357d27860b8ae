import NIOCore
import NIOHTTP2

/// A stream of a frame-level HTTP/2 connection (`HTTP2ClientStreams`,
/// `HTTP2ServerStreams`): told when a read batch that brought it frames completes, and
/// when its stream is over.
protocol HTTP2FrameStream: AnyObject {
    func readComplete()
    /// NIO reported the stream's inbound window after DATA arrived (to be topped up, or
    /// held while the exchange does not read on).
    func inboundWindowChanged(_ window: Int)
    /// NIO closed the stream (both sides ended, or a reset either way), or the connection
    /// went away, or NIO refused a frame of ours on it.
    func closed(reset: HTTP2ErrorCode?)
}

/// What both frame-level HTTP/2 handlers do at the connection level. Each sits right
/// after `NIOHTTP2Handler` (no stream multiplexer: NIO still does framing, HPACK, stream
/// states, flow-control accounting and its DoS guards) and keeps its streams by ID.
///
/// Control frames (window updates, resets) written while a read batch is in progress are
/// flushed once at its end; the streams that received frames in the batch are told then,
/// once each. The connection's inbound window is kept topped up to
/// `HTTP2Windows.connectionWindow` (NIO's multiplexer kept it at 64 KiB).
protocol HTTP2FrameConnection: ChannelDuplexHandler where OutboundOut == HTTP2Frame {
    associatedtype Stream: HTTP2FrameStream
    var context: ChannelHandlerContext? { get }
    var streams: [HTTP2StreamID: Stream] { get set }
    var batch: HTTP2ReadBatch<Stream> { get set }
    /// A stream left `streams` (closed by NIO or refused).
    func streamRemoved()
}

/// Per-connection read-batch bookkeeping of an `HTTP2FrameConnection`.
struct HTTP2ReadBatch<Stream: AnyObject> {
    var reading = false
    var flushNeeded = false
    var touched: [Stream] = []
}

enum HTTP2Windows {
    /// The connection-level inbound window both sides keep.
    static let connectionWindow = 4 << 20
    /// Bytes written to a stream but not yet sent by NIO above which the stream is not
    /// writable, until they fall under `lowWatermark`.
    static let highWatermark = 64 * 1024
    static let lowWatermark = 32 * 1024

    /// The window top-up NIO's stream channels make: back to `target` once half is used
    /// (a window driven negative by a SETTINGS change is restored within Int32).
    static func increment(window: Int, target: Int) -> Int? {
        if window >= target { return nil }
        if window >= 0 {
            let increment = target - window
            return increment >= window ? increment : nil
        }
        return min(-window + target, Int(Int32.max))
    }
}

extension HTTP2FrameConnection {
    var channelIsWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>? = nil) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    /// Writes a control frame; it is flushed at the end of the read batch, or now when
    /// written outside one.
    func writeControl(_ frame: HTTP2Frame) {
        write(frame)
        if batch.reading { batch.flushNeeded = true } else { context?.flush() }
    }

    func flush() {
        context?.flush()
    }

    func makePromise() -> EventLoopPromise<Void>? {
        context?.eventLoop.makePromise()
    }

    func touch(_ stream: Stream) {
        batch.touched.append(stream)
    }

    /// A frame of the current read batch arrived.
    func frameArrived() {
        batch.reading = true
    }

    /// The read batch is over: its streams hear it, control frames leave.
    func readBatchCompleted(context: ChannelHandlerContext) {
        batch.reading = false
        if !batch.touched.isEmpty {
            let touched = batch.touched
            batch.touched.removeAll(keepingCapacity: true)
            for stream in touched { stream.readComplete() }
        }
        if batch.flushNeeded {
            batch.flushNeeded = false
            context.flush()
        }
    }

    /// NIO's window and stream-closed events, handled; false for any other event. The
    /// connection's inbound window is topped up here, a stream's by the stream.
    func streamEventTriggered(_ event: Any) -> Bool {
        switch event {
        case let event as NIOHTTP2WindowUpdatedEvent:
            guard let window = event.inboundWindowSize else { return true }
            if event.streamID != .rootStream {
                streams[event.streamID]?.inboundWindowChanged(window)
            } else if let increment = HTTP2Windows.increment(window: window, target: HTTP2Windows.connectionWindow) {
                writeControl(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment)))
            }
            return true
        case let event as StreamClosedEvent:
            streams.removeValue(forKey: event.streamID)?.closed(reset: event.reason)
            streamRemoved()
            return true
        default:
            return false
        }
    }

    /// A stream error reached the pipeline. For an inbound one NIO has reset the stream
    /// and its `StreamClosedEvent` ends it; for a frame of ours that NIO refused, the
    /// stream is still open at NIO and the peer still waits: reset it and end it, on the
    /// next tick (not inside the write that caused it).
    func streamErrorCaught(_ error: NIOHTTP2Errors.StreamError, context: ChannelHandlerContext) {
        guard let stream = streams[error.streamID] else { return }
        context.eventLoop.assumeIsolated().execute {
            guard self.streams[error.streamID] === stream else { return }
            self.streams[error.streamID] = nil
            self.writeControl(HTTP2Frame(streamID: error.streamID, payload: .rstStream(.internalError)))
            stream.closed(reset: .internalError)
            self.streamRemoved()
        }
    }

    /// The connection is gone: every open stream ends.
    func closeAllStreams() {
        let open = streams.values
        streams.removeAll()
        for stream in open { stream.closed(reset: .cancel) }
    }
}
