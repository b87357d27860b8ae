import Logging
import MeshworkDNS
import MeshworkModel
import MeshworkTraffic
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import Prometheus
import Synchronization

/// The controller's DNS server: UDP and TCP on one port, answering from a snapshot of the
/// registry that the controller replaces on every change. A query is answered on the
/// event loop that read it, with no lock held while answering (the snapshot is a value).
final class DNSServer: Sendable {
    struct Options: Sendable {
        var listen: HostPort
        var zone = DNSZone.Options()
        /// Each query on a TCP connection must have arrived whole within this long of the
        /// connection opening or the previous answer; bytes that trickle in do not extend it
        /// (a client dripping one byte at a time is cut, not kept by every byte).
        var tcpMessageDeadline: TimeAmount = .seconds(10)
        /// At most this many TCP connections at once, and this many from one address; more
        /// are closed at accept.
        var maxTCPConnections = 256
        var maxTCPConnectionsPerSource = 32
    }

    private let options: Options
    /// The zone and its generation (one more on every change), read together.
    private let snapshot: NIOLockedValueBox<(zone: DNSZone, generation: UInt64)>
    /// The generation, readable without the lock: a query answered from a handler's
    /// `DNSAnswerCache` needs only this. It is stored after the zone, so a miss under
    /// generation n reads zone n or a newer one (whose entries go at the first query that
    /// sees its generation), never an older one.
    private let generation = Atomic<UInt64>(0)
    private let metrics: DNSMetrics
    private let logger: Logger
    private let channels = NIOLockedValueBox<[any Channel]>([])
    /// Open TCP connections (taken at accept and close only, never per query).
    fileprivate let tcpConnections = NIOLockedValueBox((total: 0, bySource: [String: Int]()))

    init(options: Options, registry: ControllerMetrics, logger: Logger) {
        self.options = options
        self.snapshot = NIOLockedValueBox((DNSZone(options: options.zone), 0))
        self.metrics = DNSMetrics(registry: registry)
        self.logger = logger
    }

    /// Replaces the snapshot the server answers from: the services named in `changed`
    /// rebuilt from `services` and `instances` (theirs), or, with `changed` nil, all of it.
    /// (Called by one controller, one change after another.)
    func update(changed: Set<String>?, services: [ServiceResource], instances: [InstanceResource], revision: Int64) {
        let next: UInt64
        if let changed {
            // In place, under the lock (a change's services only: microseconds): a copy is
            // made only while a query holds the previous zone.
            next = snapshot.withLockedValue {
                $0.zone.update(changed, services: services, instances: instances, revision: revision)
                $0.generation += 1
                return $0.generation
            }
        } else {
            let zone = DNSZone(services: services, instances: instances, revision: revision, options: options.zone)
            next = snapshot.withLockedValue {
                $0.zone = zone
                $0.generation += 1
                return $0.generation
            }
        }
        generation.store(next, ordering: .releasing)
    }

    var zone: DNSZone { snapshot.withLockedValue { $0.zone } }

    /// Binds UDP, then TCP on the same port (with port 0, UDP picks it, and another free
    /// port is tried when that one is taken for TCP); returns the address.
    func start(group: any EventLoopGroup) async throws -> SocketAddress {
        var attempt = 0
        while true {
            do {
                return try await bind(group: group)
            } catch {
                attempt += 1
                guard options.listen.port == 0, attempt < 20 else { throw error }
            }
        }
    }

    static let datagramsPerRead = 16

    private func bind(group: any EventLoopGroup) async throws -> SocketAddress {
        let udp = try await DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.maxMessagesPerRead, value: 16)
            // recvmmsg: up to 16 queries per system call under load. NIO gives each message
            // an equal share of the receive buffer, so the buffer holds 16 datagrams of the
            // payload size we advertise (4096 / 16 cut every query to 256 bytes: FORMERR for
            // any legal name over ~240 bytes).
            .channelOption(.datagramVectorReadMessageCount, value: Self.datagramsPerRead)
            .channelOption(
                .recvAllocator,
                value: FixedSizeRecvByteBufferAllocator(
                    capacity: Self.datagramsPerRead * Int(DNSWriter.advertisedPayloadSize)
                )
            )
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(DNSDatagramHandler(server: self))
                }
            }
            .bind(host: options.listen.host, port: options.listen.port)
            .get()
        guard let address = udp.localAddress, let port = address.port else {
            try? await udp.close()
            throw ControllerError("--dns: cannot listen on \(options.listen)")
        }
        let tcp: any Channel
        do {
            tcp = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        let connection = DNSConnectionGuard(server: self)
                        try sync.addHandler(connection)
                        try sync.addHandler(
                            ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes))
                        )
                        try sync.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
                        try sync.addHandler(DNSStreamHandler(server: self, connection: connection))
                    }
                }
                .bind(host: options.listen.host, port: port)
                .get()
        } catch {
            try? await udp.close()
            throw ControllerError("--dns: cannot listen on TCP \(options.listen.host):\(port): \(error)")
        }
        channels.withLockedValue { $0 = [udp, tcp] }
        logger.info("listening", metadata: ["listener": "dns", "address": "\(address)"])
        logger.info("answering DNS", metadata: ["domain": "\(options.zone.domain).", "ttl": "\(options.zone.ttl)s"])
        return address
    }

    func stop() async {
        for channel in channels.withLockedValue({ $0 }) {
            try? await channel.close()
        }
    }

    var tcpMessageDeadline: TimeAmount { options.tcpMessageDeadline }
    var maxTCPConnections: Int { options.maxTCPConnections }
    var maxTCPConnectionsPerSource: Int { options.maxTCPConnectionsPerSource }
    func refusedConnection() { metrics.refusedConnections.increment() }

    /// The answer to one UDP message, counted, from the socket handler's `cache`.
    func respond(to message: ByteBuffer, cache: inout DNSAnswerCache, random: inout SplitMix64) -> ByteBuffer? {
        let current = generation.load(ordering: .acquiring)
        let outcome = cache.respond(
            to: message.readableBytesView,
            transport: .udp,
            generation: current,
            zone: { self.zone },
            random: &random
        )
        return counted(outcome, transport: .udp)
    }

    /// The answer to one TCP message, counted, from the zone (a cache per connection
    /// would let clients hold memory by opening connections).
    func respond(to message: ByteBuffer, random: inout SplitMix64) -> ByteBuffer? {
        let outcome = DNSResponder.respond(to: message.readableBytesView, transport: .tcp, zone: zone, random: &random)
        return counted(outcome, transport: .tcp)
    }

    private func counted(_ outcome: DNSResponder.Outcome?, transport: DNSResponder.Transport) -> ByteBuffer? {
        guard let outcome else {
            metrics.ignored.increment()
            return nil
        }
        metrics.answered(transport: transport, code: outcome.code, truncated: outcome.truncated)
        return ByteBuffer(bytes: outcome.bytes)
    }
}

/// One UDP socket: a datagram in, a datagram back to its sender.
final class DNSDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let server: DNSServer
    private var random = SplitMix64(seed: UInt64.random(in: .min ... .max))
    private var cache = DNSAnswerCache()

    init(server: DNSServer) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard let answer = server.respond(to: envelope.data, cache: &cache, random: &random) else {
            return
        }
        context.write(
            wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: answer)),
            promise: nil
        )
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    /// A send that failed (the client went away) must not close the socket everyone uses.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}

/// First handler of a DNS TCP connection: counts it against `maxTCPConnections` (closing
/// it at once beyond), and closes it when no whole query arrived by the message deadline.
/// `DNSStreamHandler` calls `answered()` after each query, which starts the next deadline.
final class DNSConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let server: DNSServer
    private var counted = false
    private var source = ""
    private var deadline: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(server: DNSServer) {
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        counted = true
        source = context.channel.remoteAddress?.ipAddress ?? ""
        let source = self.source
        let fits = server.tcpConnections.withLockedValue { open in
            open.total += 1
            open.bySource[source, default: 0] += 1
            return open.total <= server.maxTCPConnections
                && open.bySource[source, default: 0] <= server.maxTCPConnectionsPerSource
        }
        guard fits else {
            server.refusedConnection()
            context.close(promise: nil)
            return
        }
        armDeadline(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        deadline?.cancel()
        deadline = nil
        if counted {
            counted = false
            let source = self.source
            server.tcpConnections.withLockedValue { open in
                open.total -= 1
                let left = open.bySource[source, default: 1] - 1
                open.bySource[source] = left > 0 ? left : nil
            }
        }
    }

    /// A whole query was read and answered: the next one has a full deadline again.
    func answered() {
        if let context { armDeadline(context: context) }
    }

    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: server.tcpMessageDeadline) {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }
}

/// One TCP connection: length-prefixed messages (RFC 1035 4.2.2), several per connection.
final class DNSStreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: DNSServer
    private let connection: DNSConnectionGuard
    private var random = SplitMix64(seed: UInt64.random(in: .min ... .max))

    init(server: DNSServer, connection: DNSConnectionGuard) {
        self.server = server
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let answer = server.respond(to: unwrapInboundIn(data), random: &random)
        else {
            // Not a query (a response, or no header): nothing sensible to say.
            context.close(promise: nil)
            return
        }
        context.write(wrapOutboundOut(answer), promise: nil)
        connection.answered()
        // A client that sends queries and does not read the answers: stop reading until
        // the answers drain, so they cannot pile up in memory.
        if !context.channel.isWritable {
            context.flush()
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// `meshwork_controller_dns_queries_total{transport,rcode}` and the truncations.
struct DNSMetrics: Sendable {
    private struct Key: Hashable {
        var transport: DNSResponder.Transport
        var code: DNSResponseCode
    }

    private let counters: [Key: Counter]
    let ignored: Counter
    private let truncated: Counter
    let refusedConnections: Counter

    init(registry: ControllerMetrics) {
        var counters: [Key: Counter] = [:]
        for transport in DNSResponder.Transport.allCases {
            for code in DNSResponseCode.allCases {
                counters[Key(transport: transport, code: code)] = registry.registry.makeCounter(
                    name: "meshwork_controller_dns_queries_total",
                    labels: [("transport", transport.rawValue), ("rcode", code.name)]
                )
            }
        }
        self.counters = counters
        self.ignored = registry.registry.makeCounter(name: "meshwork_controller_dns_ignored_total")
        self.truncated = registry.registry.makeCounter(name: "meshwork_controller_dns_truncated_total")
        self.refusedConnections = registry.registry.makeCounter(
            name: "meshwork_controller_dns_tcp_connections_refused_total"
        )
    }

    func answered(transport: DNSResponder.Transport, code: DNSResponseCode, truncated: Bool) {
        counters[Key(transport: transport, code: code)]?.increment()
        if truncated { self.truncated.increment() }
    }
}
