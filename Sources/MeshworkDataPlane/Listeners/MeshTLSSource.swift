import Logging
import MeshworkModel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// The sidecar's current mTLS material, read each time a connection is made (never per
/// request): a renewed certificate or a new trust bundle applies to new connections while
/// the established ones carry on undisturbed.
///
/// Filled from the static `tls` files, or by the identity agent with the certificate the
/// controller issued (then `identity` is the workload's SPIFFE ID, and outbound connections
/// check that the peer presents the identity of the service they meant to reach).
public final class MeshTLSSource: Sendable {
    private let box: NIOLockedValueBox<MeshTLS?>
    private let logger: Logger
    /// Serials (lowercase hex) of revoked workload certificates, from the controller: a
    /// peer presenting one fails the handshake, both ways. Read once per handshake.
    private let revoked = NIOLockedValueBox<Set<String>>([])

    init(_ tls: MeshTLS?, logger: Logger) {
        box = NIOLockedValueBox(tls)
        self.logger = logger
    }

    var current: MeshTLS? { box.withLockedValue { $0 } }

    /// Installs a new certificate, key and trust bundle (PEM); connections made from now on
    /// use them.
    public func update(certificateChain: String, privateKey: String, trustBundle: String, identity: SPIFFEID) throws {
        let tls = try MeshTLS(
            chain: try NIOSSLCertificate.fromPEMBytes(Array(certificateChain.utf8)),
            key: try NIOSSLPrivateKey(bytes: Array(privateKey.utf8), format: .pem),
            roots: try NIOSSLCertificate.fromPEMBytes(Array(trustBundle.utf8)),
            identity: identity
        )
        box.withLockedValue { $0 = tls }
    }

    /// Replaces the revoked serials (the controller pushes the whole list); whether it
    /// changed.
    @discardableResult
    public func setRevoked(_ serials: [String]) -> Bool {
        let set = Set(serials.map { $0.lowercased() })
        let changed = revoked.withLockedValue { current in
            defer { current = set }
            return current != set
        }
        if changed { logger.notice("revoked certificates updated", metadata: ["count": "\(set.count)"]) }
        return changed
    }

    var revokedSerials: Set<String> { revoked.withLockedValue { $0 } }

    /// The identity this sidecar presents, once it has one.
    public var identity: SPIFFEID? { current?.identity }

    enum Purpose: Sendable {
        /// HTTP/2 to a peer sidecar (ALPN h2).
        case http2
        /// HTTP/1.1 upgrades (WebSocket) to a peer sidecar (ALPN http/1.1).
        case http1
        /// Opaque TCP to a peer sidecar.
        case tcp
    }

    /// A client TLS handler for a connection to a peer sidecar of `peerService`. When this
    /// sidecar has a workload identity, the handshake fails unless the peer's certificate
    /// carries `spiffe://<our trust domain>/service/<peerService>`: a compromised instance
    /// of another service cannot pose as this one.
    func clientHandler(
        _ purpose: Purpose,
        peerService: String?,
        metrics: ClusterMetrics? = nil
    ) throws -> NIOSSLClientHandler {
        guard let tls = current else { throw MeshTLSUnavailable() }
        let context: NIOSSLContext
        switch purpose {
        case .http2: context = tls.clientHTTP2
        case .http1: context = tls.clientHTTP1
        case .tcp: context = tls.clientTCP
        }
        let logger = self.logger
        let revoked = revokedSerials
        guard let own = tls.identity, let peerService else {
            return try NIOSSLClientHandler._makeSSLClientHandler(
                context: context,
                serverHostname: nil,
                additionalPeerCertificateVerificationCallback: { certificate, channel in
                    Self.checkWorkloadLeaf(certificate, revoked: revoked, channel: channel, logger: logger)
                }
            )
        }
        let expected = SPIFFEID.service(peerService, trustDomain: own.trustDomain)
        return try NIOSSLClientHandler._makeSSLClientHandler(
            context: context,
            serverHostname: nil,
            additionalPeerCertificateVerificationCallback: { certificate, channel in
                if let refusal = WorkloadLeaf.refusal(certificate, revoked: revoked) {
                    return Self.refuseLeaf(refusal, channel: channel, logger: logger)
                }
                let presented = WorkloadLeaf.facts(certificate).identities
                guard presented == [expected] else {
                    metrics?.countError(.peerIdentityMismatch)
                    logger.warning(
                        "peer presented the wrong identity; connection refused",
                        metadata: [
                            "expected": "\(expected)",
                            "presented": "\(presented.map(\.description).joined(separator: ","))",
                            "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
                        ]
                    )
                    return channel.eventLoop.makeFailedFuture(
                        PeerIdentityMismatch(expected: expected, presented: presented)
                    )
                }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
        )
    }

    /// A server TLS handler for the inbound listener, or nil when there is no certificate
    /// yet. A client certificate that is no workload's (a CA's) fails the handshake.
    func serverHandler() -> NIOSSLServerHandler? {
        let logger = self.logger
        let revoked = revokedSerials
        return current.map {
            NIOSSLServerHandler._makeSSLServerHandler(
                context: $0.server,
                additionalPeerCertificateVerificationCallback: { certificate, channel in
                    Self.checkWorkloadLeaf(certificate, revoked: revoked, channel: channel, logger: logger)
                }
            )
        }
    }

    /// The X.509-SVID leaf rules (`WorkloadLeaf`), as a verification step of the handshake.
    static func checkWorkloadLeaf(
        _ certificate: NIOSSLCertificate,
        revoked: Set<String> = [],
        channel: any Channel,
        logger: Logger
    ) -> EventLoopFuture<Void> {
        guard let refusal = WorkloadLeaf.refusal(certificate, revoked: revoked) else {
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        return refuseLeaf(refusal, channel: channel, logger: logger)
    }

    private static func refuseLeaf(_ reason: String, channel: any Channel, logger: Logger) -> EventLoopFuture<Void> {
        logger.warning(
            "peer presented a certificate that is no workload's; connection refused",
            metadata: ["reason": "\(reason)", "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"]
        )
        return channel.eventLoop.makeFailedFuture(NotAWorkloadCertificate(reason: reason))
    }

    /// The SPIFFE IDs in a certificate's URI SANs.
    static func spiffeIDs(of certificate: NIOSSLCertificate) -> [SPIFFEID] {
        certificate._subjectAlternativeNames().compactMap { name in
            guard name.nameType == .uri else { return nil }
            return SPIFFEID(String(decoding: Array(name.contents), as: UTF8.self))
        }
    }
}

/// A mesh connection was needed before the sidecar had a certificate.
struct MeshTLSUnavailable: Error, CustomStringConvertible {
    var description: String { "no workload certificate yet" }
}

/// The peer's certificate is from the mesh CA but for another service than the one called.
public struct PeerIdentityMismatch: Error, CustomStringConvertible {
    public let expected: SPIFFEID
    public let presented: [SPIFFEID]
    public var description: String {
        "peer identity \(presented.map(\.description).joined(separator: ",")) is not \(expected)"
    }
}

/// How connections to one cluster's peer sidecars are wrapped in mTLS: the source of the
/// current certificate, the ALPN purpose, and the service whose identity the peer must
/// present.
struct PeerTLS: Sendable {
    let source: MeshTLSSource
    let purpose: MeshTLSSource.Purpose
    let peerService: String?
    /// Where identity mismatches are counted.
    var metrics: ClusterMetrics? = nil

    func makeHandler() throws -> NIOSSLClientHandler {
        try source.clientHandler(purpose, peerService: peerService, metrics: metrics)
    }

    func with(_ purpose: MeshTLSSource.Purpose) -> PeerTLS {
        PeerTLS(source: source, purpose: purpose, peerService: peerService, metrics: metrics)
    }
}
