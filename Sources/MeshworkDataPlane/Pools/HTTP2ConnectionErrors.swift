import NIOHTTP2

/// Errors after which NIO has sent GOAWAY and stops serving the HTTP/2 connection: its
/// denial-of-service guards, and frames for a stream it no longer remembers (a
/// connection error of type STREAM_CLOSED, RFC 9113 section 5.1). Stream-level errors are
/// reported on the same path but leave the connection usable, so they are not listed.
func isFatalHTTP2ConnectionError(_ error: any Error) -> Bool {
    switch error {
    case is NIOHTTP2Errors.ExcessiveNumberOfGlitches, is NIOHTTP2Errors.ExcessiveRSTFrames,
        is NIOHTTP2Errors.ExcessiveStreamErrors, is NIOHTTP2Errors.ExcessiveControlFrames,
        is NIOHTTP2Errors.ExcessiveEmptyDataFrames, is NIOHTTP2Errors.ExcessiveContinuationFrames,
        is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering, is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock,
        is NIOHTTP2Errors.NoSuchStream:
        return true
    default:
        return false
    }
}

/// Streams whose late frames are silently ignored after we reset them. NIO remembers 32 by
/// default; when many apps hang up at once (a load generator stopping, a deploy) more
/// streams than that are reset together, and the peer's in-flight answers for the
/// forgotten ones are a connection error that would take every other stream down with it.
let recentlyResetStreamsRemembered = 16_384
