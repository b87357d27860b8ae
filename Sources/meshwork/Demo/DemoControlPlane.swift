import Foundation
import MeshworkModel

/// `meshwork demo --ha`: the demo's control plane as three `meshwork controller` processes
/// (this binary) on a 3-member etcd cluster started from Debian's `etcd` on PATH, all on
/// 127.0.0.1, so the demo can SIGKILL the leader as a crash would and show the mesh go on.
/// Children are real processes, not tasks: a killed one gets no chance to step down.
actor DemoControlPlane {
    struct Member {
        var name: String
        var arguments: [String]
        var logFile: String
        var process: Process?
    }

    static let prefix = "/meshwork-demo"
    static let electionTTL = "2s"

    let directory: String
    let token: String
    private(set) var etcdEndpoints: [String] = []
    private var etcd: [Member] = []
    private(set) var controllers: [Member] = []
    private(set) var urls: [String] = []
    private(set) var dnsPorts: [Int] = []

    init(directory: String, token: String) {
        self.directory = directory
        self.token = token
    }

    /// Starts etcd, then the controllers one after another (the first creates the CA);
    /// returns once every controller serves its API.
    func start(ready: @Sendable (String) async -> Bool) async throws {
        guard let etcdBinary = Self.executable("etcd") else {
            throw CommandFailure("demo --ha needs etcd on PATH (Debian: apt-get install etcd-server)")
        }
        let ports = try Self.freePorts(12)
        let peers = (0..<3).map { "m\($0 + 1)=http://127.0.0.1:\(ports[3 + $0])" }.joined(separator: ",")
        for n in 0..<3 {
            let client = "http://127.0.0.1:\(ports[n])"
            etcdEndpoints.append(client)
            let peer = "http://127.0.0.1:\(ports[3 + n])"
            etcd.append(
                Member(
                    name: "m\(n + 1)",
                    arguments: [
                        etcdBinary, "--name", "m\(n + 1)", "--data-dir", path("etcd-m\(n + 1)"),
                        "--listen-client-urls", client, "--advertise-client-urls", client,
                        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                        "--initial-cluster", peers, "--initial-cluster-token", "meshwork-demo",
                        "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
                    ],
                    logFile: path("etcd-m\(n + 1).log")
                )
            )
        }
        for index in etcd.indices { etcd[index].process = try launch(etcd[index]) }
        try SecretFile.write(token + "\n", to: path("token"))
        let store =
            "etcd://"
            + etcdEndpoints.map { $0.replacingOccurrences(of: "http://", with: "") }
            .joined(separator: ",")
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        for n in 0..<3 {
            let name = "controller-\(n + 1)"
            urls.append("https://127.0.0.1:\(ports[6 + n])")
            dnsPorts.append(ports[9 + n])
            controllers.append(
                Member(
                    name: name,
                    arguments: [
                        binary, "controller", "--data-dir", path(name), "--listen", "127.0.0.1:\(ports[6 + n])",
                        "--dns", "127.0.0.1:\(ports[9 + n])", "--store", store, "--etcd-prefix", Self.prefix,
                        "--name", name, "--election-ttl", Self.electionTTL, "--token-file", path("token"),
                    ],
                    logFile: path("\(name).log")
                )
            )
        }
        for index in controllers.indices {
            controllers[index].process = try launch(controllers[index])
            // Bounded: 30 s for etcd's first election and the controller's start.
            let deadline = ContinuousClock.now + .seconds(30)
            while !(await ready(urls[index])) {
                guard ContinuousClock.now < deadline, controllers[index].process?.isRunning == true else {
                    throw CommandFailure("\(controllers[index].name) did not start (see \(controllers[index].logFile))")
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// The first controller's trust bundle (the CA is one, in etcd).
    var caFile: String { path("controller-1/ca.pem") }

    /// SIGKILLs controller `name`; waits until it is gone.
    func kill(_ name: String) async {
        guard let index = controllers.firstIndex(where: { $0.name == name }),
            let process = controllers[index].process
        else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        await Self.wait(process)
        controllers[index].process = nil
    }

    /// Starts controller `name` again (on its data directory and ports).
    func restart(_ name: String) throws {
        guard let index = controllers.firstIndex(where: { $0.name == name }), controllers[index].process == nil
        else { return }
        controllers[index].process = try launch(controllers[index])
    }

    func isRunning(_ name: String) -> Bool {
        controllers.first { $0.name == name }?.process?.isRunning == true
    }

    /// SIGTERM to the controllers, then etcd; SIGKILL what has not stopped within 5 s.
    func stop() async {
        for group in [controllers, etcd] {
            let running = group.compactMap(\.process).filter(\.isRunning)
            for process in running { process.terminate() }
            for process in running {
                let deadline = ContinuousClock.now + .seconds(5)
                while process.isRunning, ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(50))
                }
                if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
                await Self.wait(process)
            }
        }
        controllers = controllers.map { member in
            var member = member
            member.process = nil
            return member
        }
        etcd.removeAll()
    }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// A child with its output in its log file (appended: a restart keeps the earlier log).
    private func launch(_ member: Member) throws -> Process {
        if !FileManager.default.fileExists(atPath: member.logFile) {
            FileManager.default.createFile(atPath: member.logFile, contents: nil)
        }
        guard let log = FileHandle(forWritingAtPath: member.logFile) else {
            throw CommandFailure("cannot write \(member.logFile)")
        }
        log.seekToEndOfFile()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: member.arguments[0])
        process.arguments = Array(member.arguments.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = log
        process.standardError = log
        try process.run()
        try? log.close()
        return process
    }

    private static func wait(_ process: Process) async {
        // Bounded: a SIGKILLed or SIGTERMed child is gone within moments.
        for _ in 0..<200 where process.isRunning { try? await Task.sleep(for: .milliseconds(25)) }
    }

    static func executable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return (path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"])
            .map { ($0 as NSString).appendingPathComponent(name) }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// `count` distinct free TCP ports on 127.0.0.1 (held together while chosen, so they
    /// differ; free again when returned, as etcd and the controllers bind them next).
    static func freePorts(_ count: Int) throws -> [Int] {
        var sockets: [Int32] = []
        defer { for socket in sockets { close(socket) } }
        var ports: [Int] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw CommandFailure("no socket for a free port") }
            sockets.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
                }
            }
            guard bound else { throw CommandFailure("cannot find a free port on 127.0.0.1") }
            ports.append(Int(UInt16(bigEndian: address.sin_port)))
        }
        return ports
    }
}
