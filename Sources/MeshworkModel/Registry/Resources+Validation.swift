import Yams

// API bodies are read with the same reader as config files (JSON is YAML): unknown fields
// are refused, and every problem is reported with its field path and the reason.

extension ServiceResource {
    /// Parses a service from JSON or YAML; `name` (from the URL) wins over the body's.
    public static func parse(_ text: String, name: String? = nil) throws(ConfigErrors) -> ServiceResource {
        let reader = ConfigReader()
        var result: ServiceResource?
        if let root = reader.parse(text) {
            result = read(root, "", reader, name: name)
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    static func read(_ node: Node, _ path: String, _ reader: ConfigReader, name: String? = nil) -> ServiceResource? {
        let known: Set = ["kind", "name", "protocol", "ports", "policy"]
        guard let f = reader.mapping(node, path, known: known) else { return nil }
        let bodyName = f.string("name")
        guard let serviceName = name ?? f.required("name", bodyName) else { return nil }
        if let name, let bodyName, bodyName != name {
            reader.fail(f.path("name"), "\"\(bodyName)\" does not match the service in the URL, \"\(name)\"")
        }
        if let reason = Names.invalidServiceName(serviceName) { reader.fail(f.path("name"), reason) }
        var service = ServiceResource(name: serviceName)
        if let p = f.choice("protocol", as: ServiceProtocol.self) { service.protocol = p }
        if f.node("ports") != nil {
            service.ports = []
            for (portPath, portNode) in reader.sequence(f.node("ports"), f.path("ports")) {
                guard let p = reader.mapping(portNode, portPath, known: ["name", "protocol"]) else { continue }
                guard let portName = p.required("name", p.string("name")) else { continue }
                if let reason = Names.invalidLabel(portName) { reader.fail(p.path("name"), reason) }
                service.ports.append(
                    ServicePort(name: portName, protocol: p.choice("protocol", as: TransportProtocol.self) ?? .tcp)
                )
            }
        }
        if let p = reader.mapping(f.node("policy"), f.path("policy"), known: SidecarConfig.policyKeys) {
            SidecarConfig.readPolicy(p, reader, into: &service.policy)
        }
        return service
    }
}

extension InstanceResource {
    /// Parses an instance from JSON or YAML; `id` (from the URL) wins over the body's.
    public static func parse(_ text: String, id: String? = nil) throws(ConfigErrors) -> InstanceResource {
        let reader = ConfigReader()
        var result: InstanceResource?
        if let root = reader.parse(text) {
            result = read(root, "", reader, id: id)
        }
        guard reader.errors.isEmpty, let result else { throw ConfigErrors(reader.errors) }
        return result
    }

    static func read(_ node: Node, _ path: String, _ reader: ConfigReader, id: String? = nil) -> InstanceResource? {
        let known: Set = [
            "kind", "id", "service", "address", "port", "zone", "weight", "version", "metadata", "health", "ttlSeconds",
        ]
        guard let f = reader.mapping(node, path, known: known) else { return nil }
        let service = f.required("service", f.string("service"))
        let address = f.required("address", f.string("address"))
        let port = f.required("port", f.int("port", range: 1...65535))
        if let service, let reason = Names.invalidServiceName(service) { reader.fail(f.path("service"), reason) }
        if let address, address.isEmpty || address.contains(where: { $0.isWhitespace || $0 == "/" }) {
            reader.fail(f.path("address"), "must be an IP address or host name")
        }
        let bodyID = f.string("id")
        if let id, let bodyID, bodyID != id {
            reader.fail(f.path("id"), "\"\(bodyID)\" does not match the instance in the URL, \"\(id)\"")
        }
        guard let service, let address, let port else { return nil }
        let instanceID = id ?? bodyID ?? InstanceResource.defaultID(service: service, address: address, port: port)
        if let reason = Names.invalidID(instanceID) { reader.fail(f.path("id"), reason) }
        var instance = InstanceResource(id: instanceID, service: service, address: address, port: port)
        if let zone = f.string("zone") {
            if let reason = Names.invalidLabel(zone) { reader.fail(f.path("zone"), reason) }
            instance.zone = zone
        }
        if let w = f.int("weight", range: 0...65535) { instance.weight = w }
        if let v = f.string("version") { instance.version = v }
        if let h = f.choice("health", as: InstanceHealth.self) { instance.health = h }
        if let t = f.int("ttlSeconds", range: 0...86_400) { instance.ttlSeconds = t }
        if let m = f.node("metadata") {
            guard let mapping = m.mapping else {
                reader.fail(f.path("metadata"), "expected a mapping of strings")
                return instance
            }
            for (key, value) in mapping {
                guard let k = key.string, let v = value.scalar?.string else {
                    reader.fail(f.path("metadata"), "keys and values must be strings")
                    continue
                }
                // Bounded: an instance is one store document, read by every controller
                // and pushed to every watcher of its service.
                guard k.utf8.count <= 128, v.utf8.count <= 1024 else {
                    reader.fail(f.path("metadata"), "keys of at most 128 bytes and values of at most 1024")
                    continue
                }
                instance.metadata[k] = v
            }
            if instance.metadata.count > 64 { reader.fail(f.path("metadata"), "at most 64 entries") }
        }
        return instance
    }
}

extension InstanceResource {
    /// `<service>-<address>-<port>` with the address's dots and colons turned into dashes.
    public static func defaultID(service: String, address: String, port: Int) -> String {
        let host = String(address.lowercased().map { $0 == "." || $0 == ":" || $0 == "[" || $0 == "]" ? "-" : $0 })
        return "\(service)-\(host)-\(port)"
    }
}

/// Naming rules: service names and zones become DNS labels, so they follow RFC 1123.
public enum Names {
    /// nil when `name` is a valid service name (a lowercase DNS label).
    public static func invalidServiceName(_ name: String) -> String? {
        invalidLabel(name)
    }

    public static func invalidLabel(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 63 else { return "must be 1 to 63 characters" }
        let allowed = bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        guard allowed, bytes.first != 0x2D, bytes.last != 0x2D else {
            return "must be lowercase letters, digits and '-', not starting or ending with '-' (found \"\(name)\")"
        }
        return nil
    }

    /// nil when `id` is a valid instance id: a DNS label, or dotted labels.
    public static func invalidID(_ id: String) -> String? {
        guard id.utf8.count <= 253 else { return "must be at most 253 characters" }
        for label in id.split(separator: ".", omittingEmptySubsequences: false) {
            if invalidLabel(String(label)) != nil {
                return "must be dot-separated lowercase labels of letters, digits and '-' (found \"\(id)\")"
            }
        }
        return nil
    }
}
