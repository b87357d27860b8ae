import ArgumentParser
import Foundation
import NIOHTTP1

/// `meshwork ctl rollout status|promote|abort|retry|pause|resume NAME` (docs/rollouts.md).
struct CtlRollout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout",
        abstract: "Follow and steer a rollout.",
        subcommands: [Status.self, Promote.self, Abort.self, Retry.self, Pause.self, Resume.self]
    )

    /// A rollout's status as lines: phase, step, weights, the last figures, the message.
    static func describe(_ object: [String: Any]) -> [String] {
        let status = object["status"] as? [String: Any] ?? [:]
        let steps = (object["steps"] as? [Any])?.count ?? 0
        let weight = status["weight"] as? Int ?? 0
        var lines = [
            "rollout  \(Table.string(object["name"]))  (\(Table.string(object["service"])): "
                + "\(Table.string(object["stable"])) -> \(Table.string(object["canary"])))",
            "phase    \(Table.string(status["phase"]))",
            "step     \(min((status["step"] as? Int ?? 0) + 1, steps)) of \(steps)",
            "weights  \(Table.string(object["stable"])) \(100 - weight)%, \(Table.string(object["canary"])) \(weight)%",
        ]
        if let figures = status["figures"] as? [String: Any] {
            let rate = (figures["successRate"] as? Double).map { String(format: "%.2f%%", $0) } ?? "-"
            let p99 = (figures["p99"] as? Double).map { String(format: "%.1f ms", $0) } ?? "-"
            lines.append("analysis \(Table.string(figures["requests"])) requests, success \(rate), p99 \(p99)")
        }
        lines.append("message  \(Table.string(status["message"]))")
        return lines
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a rollout: phase, step, weights, the last analysis; -w follows it."
        )
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        @Flag(name: .shortAndLong, help: "Follow it: print again on every change, until it ends.") var watch = false

        func run() async throws {
            var last: [String] = []
            while true {
                let data = try await options.call(.GET, "/v1/rollouts/\(name)")
                if options.output != .table {
                    try options.print(data) { _ in [] }
                    return
                }
                let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
                let lines = CtlRollout.describe(object)
                if lines != last {
                    print(lines.joined(separator: "\n") + (watch ? "\n" : ""))
                    fflush(nil)
                    last = lines
                }
                let phase = (object["status"] as? [String: Any])?["phase"] as? String ?? ""
                guard watch, !["Promoted", "Degraded", "Aborted"].contains(phase) else { return }
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    static func send(_ command: String, _ name: String, _ options: CtlOptions) async throws {
        let data = try await options.call(.POST, "/v1/rollouts/\(name)/\(command)")
        let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
        print(describe(object).joined(separator: "\n"))
    }

    struct Promote: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Past the current pause or analysis step (or ask the confirm webhook again)."
        )
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        func run() async throws { try await CtlRollout.send("promote", name, options) }
    }

    struct Abort: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "All traffic back to stable, in one push.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        func run() async throws { try await CtlRollout.send("abort", name, options) }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a rolled-back rollout over.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        func run() async throws { try await CtlRollout.send("retry", name, options) }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Hold it where it is.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        func run() async throws { try await CtlRollout.send("pause", name, options) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Go on from a pause (a held analysis measures anew).")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The rollout's name.") var name: String
        func run() async throws { try await CtlRollout.send("resume", name, options) }
    }
}
