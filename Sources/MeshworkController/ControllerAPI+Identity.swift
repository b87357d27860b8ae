import Foundation
import Hummingbird
import MeshworkIdentity
import MeshworkModel
import NIOCore

extension ControllerAPI {
    /// Join tokens (operator), certificate requests (join token or renewal proof) and the
    /// trust bundle (open: it is public).
    func addIdentityRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.post("tokens") { request, _ in
            try await authorizeOperator(request)
            var request = request
            let text = try await body(&request)
            let spec = try validated { () throws(ConfigErrors) in try Self.parseTokenRequest(text) }
            if let scope = spec.scope {
                return try json(try await identity.createOperatorToken(scope: scope, ttl: spec.ttl))
            }
            return try json(try await identity.createJoinToken(service: spec.service, ttl: spec.ttl, uses: spec.uses))
        }
        v1.get("tokens") { request, _ in
            try await authorizeOperator(request)
            return try json(await identity.listTokens())
        }
        v1.delete("tokens/:id") { request, context in
            try await authorizeOperator(request)
            let id = try context.parameters.require("id")
            guard try await identity.deleteToken(id) else {
                throw APIError(status: .notFound, message: "no join token \"\(id)\"")
            }
            return try json(["deleted": id])
        }
        // Revocation: {"instance": ID} | {"service": NAME} | {"token": ID}, exactly one.
        v1.post("revocations") { request, _ in
            try await authorizeOperator(request)
            var request = request
            let text = try await body(&request)
            let revocation = try validated { () throws(ConfigErrors) in try Self.parseRevocation(text) }
            let serials = try await identity.revoke(revocation)
            return try json(
                RevocationAnswer(scope: revocation.scope.rawValue, value: revocation.value, revoked: serials)
            )
        }
        v1.get("revocations") { request, _ in
            try await authorizeOperator(request)
            return try json(["revoked": await identity.trustBundle.revoked])
        }
        v1.post("certificates") { request, _ in
            var request = request
            let text = try await body(&request)
            let spec = try validated { () throws(ConfigErrors) in try Self.parseCertificateRequest(text) }
            return try json(try await identity.issue(spec))
        }
        v1.get("certificates") { _, _ in
            try json(["certificates": await identity.certificateExpiries()])
        }
        v1.get("ca") { _, _ in try await json(identity.status) }
        v1.get("leader") { _, _ in try await json(controller.leadership()) }
        // CA rotation, one step per call: prepare (a new root joins the trust bundle),
        // activate (it signs; sidecars renew), finish (the old root leaves).
        v1.post("ca/rotate") { request, _ in
            try await authorizeOperator(request)
            var request = request
            let text = try await body(&request)
            let step = try validated { () throws(ConfigErrors) in try Self.parseRotation(text) }
            switch step {
            case .prepare(let supplied): try await identity.prepareRotation(supplied: supplied)
            case .activate: try await identity.activateRotation()
            case .finish(let force): try await identity.finishRotation(force: force)
            }
            return try json(await identity.status)
        }
        v1.get("trust-bundle") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "application/x-pem-file"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: await identity.trustBundlePEM))
            )
        }
    }

    enum RotationStep {
        case prepare((certificates: String, key: String)?)
        case activate
        case finish(force: Bool)
    }

    /// `{"step": "prepare", "certificate": PEM?, "key": PEM?}`, `{"step": "activate"}` or
    /// `{"step": "finish", "force": false}`.
    static func parseRotation(_ text: String) throws(ConfigErrors) -> RotationStep {
        enum Step: String, CaseIterable { case prepare, activate, finish }
        let reader = ConfigReader()
        var result: RotationStep?
        if let root = reader.parse(text),
            let f = reader.mapping(root, "", known: ["step", "certificate", "key", "force"])
        {
            let certificate = f.string("certificate")
            let key = f.string("key")
            if (certificate == nil) != (key == nil) {
                reader.fail(f.path(key == nil ? "key" : "certificate"), "certificate and key go together")
            }
            switch f.required("step", f.choice("step", as: Step.self)) {
            case .prepare?:
                result = .prepare(certificate.flatMap { c in key.map { (c, $0) } })
            case .activate?: result = .activate
            case .finish?: result = .finish(force: f.bool("force") ?? false)
            case nil: break
            }
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    struct TokenRequest {
        var service: String
        var ttl: Duration
        var uses: Int
        /// Set for an operator token.
        var scope: OperatorScope?
    }

    /// A join token: `{"service": "orders", "ttl": "1h", "uses": 1}` (ttl defaults to 1 h,
    /// at most 30 days; uses to 1). An operator token: `{"kind": "operator", "scope":
    /// "read"|"write", "ttl": "720h"}` (ttl defaults to 30 days, at most a year).
    static func parseTokenRequest(_ text: String) throws(ConfigErrors) -> TokenRequest {
        enum Kind: String, CaseIterable { case join, `operator` }
        let reader = ConfigReader()
        var result: TokenRequest?
        let known: Set = ["kind", "service", "ttl", "uses", "scope"]
        if let root = reader.parse(text), let f = reader.mapping(root, "", known: known) {
            if f.choice("kind", as: Kind.self) == .operator {
                let scope = f.required("scope", f.choice("scope", as: OperatorScope.self))
                let ttl = f.duration("ttl")?.duration ?? .seconds(30 * 86_400)
                if ttl < .seconds(1) || ttl > .seconds(365 * 86_400) {
                    reader.fail(f.path("ttl"), "must be between 1s and 365 days")
                }
                if f.node("service") != nil { reader.fail(f.path("service"), "an operator token is for no service") }
                if let scope { result = TokenRequest(service: "", ttl: ttl, uses: 0, scope: scope) }
            } else {
                let service = f.required("service", f.string("service"))
                if let service, let reason = Names.invalidServiceName(service) {
                    reader.fail(f.path("service"), reason)
                }
                let ttl = f.duration("ttl")?.duration ?? .seconds(3600)
                if ttl < .seconds(1) || ttl > .seconds(30 * 86_400) {
                    reader.fail(f.path("ttl"), "must be between 1s and 30 days")
                }
                let uses = f.int("uses", range: 1...100_000) ?? 1
                if f.node("scope") != nil { reader.fail(f.path("scope"), "only operator tokens have a scope") }
                if let service { result = TokenRequest(service: service, ttl: ttl, uses: uses) }
            }
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    /// `{"csr": PEM, "token": "..."}` or `{"csr": PEM, "certificate": PEM, "proof": base64}`,
    /// with optional `ttl` (capped by the controller's) and `instance` (the only instance
    /// the credential may then write).
    static func parseCertificateRequest(_ text: String) throws(ConfigErrors) -> IdentityService.CertificateRequest {
        let reader = ConfigReader()
        var result: IdentityService.CertificateRequest?
        let known: Set = ["csr", "token", "certificate", "proof", "ttl", "instance"]
        if let root = reader.parse(text), let f = reader.mapping(root, "", known: known) {
            let csr = f.required("csr", f.string("csr"))
            var request = IdentityService.CertificateRequest(csr: csr ?? "")
            request.token = f.string("token")
            request.certificate = f.string("certificate")
            request.proof = f.string("proof")
            request.ttl = f.duration("ttl")?.duration
            if let ttl = request.ttl, ttl < .seconds(1) { reader.fail(f.path("ttl"), "must be at least 1s") }
            request.instance = f.string("instance")
            if let instance = request.instance, let reason = Names.invalidID(instance) {
                reader.fail(f.path("instance"), reason)
            }
            if request.token != nil, request.certificate != nil {
                reader.fail(f.path("token"), "give a join token or a certificate to renew, not both")
            }
            if (request.certificate == nil) != (request.proof == nil) {
                reader.fail(
                    f.path(request.proof == nil ? "proof" : "certificate"),
                    "a renewal needs both certificate and proof"
                )
            }
            if csr != nil { result = request }
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    struct RevocationAnswer: Encodable {
        let scope: String
        let value: String
        /// The serials (hex) of the certificates revoked by this request.
        let revoked: [String]
    }

    static func parseRevocation(_ text: String) throws(ConfigErrors) -> IdentityService.Revocation {
        let reader = ConfigReader()
        var found: [IdentityService.Revocation] = []
        if let root = reader.parse(text), let f = reader.mapping(root, "", known: ["instance", "service", "token"]) {
            for scope in [IdentityService.Revocation.Scope.instance, .service, .token] {
                if let value = f.string(scope.rawValue) {
                    if value.isEmpty || value.utf8.count > 253 {
                        reader.fail(f.path(scope.rawValue), "must be 1 to 253 bytes")
                    } else {
                        found.append(IdentityService.Revocation(scope: scope, value: value))
                    }
                }
            }
        }
        if reader.errors.isEmpty, found.count != 1 {
            reader.fail("", "give exactly one of instance, service or token")
        }
        guard reader.errors.isEmpty, let revocation = found.first else { throw ConfigErrors(reader.errors) }
        return revocation
    }
}
