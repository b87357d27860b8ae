import AsyncHTTPClient
import Foundation
import HTTPTypes
import Logging
import MeshworkModel
import NIOCore
import NIOHTTP1

/// A rollout and where it is.
struct RolloutEntry: Sendable, Hashable, Encodable {
    var rollout: Rollout
    var status: RolloutStatus

    /// The rollout in its own shape, with `status` (phase, step, weights, figures, history).
    func encode(to encoder: any Encoder) throws {
        try RolloutWithStatus(rollout: rollout, status: status).encode(to: encoder)
    }
}

/// Rollouts (issue 19): the controller keeps each one's status, steps it every second
/// with its own telemetry (`driveRollouts`), and writes the route the status implies
/// (`rollout-<name>`) through the registry, so every caller of the service gets the new
/// weights in one push. The status is committed before the route is written: a controller
/// that stops between the two writes the route again when it resumes.
extension Controller {
    static func wallClock() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    func rolloutEntries() -> [RolloutEntry] {
        rollouts.values.sorted { $0.rollout.name < $1.rollout.name }
    }

    func rolloutEntry(_ name: String) -> RolloutEntry? { rollouts[name] }

    /// Creates a rollout, or replaces one: a changed spec starts over from its first step
    /// (what moved is recomputed from the new steps); the same spec changes nothing.
    func putRollout(_ rollout: Rollout, now: Int64 = Controller.wallClock()) async throws -> RolloutEntry {
        try await exclusively { try await putRolloutNow(rollout, now: now) }
    }

    private func putRolloutNow(_ rollout: Rollout, now: Int64) async throws -> RolloutEntry {
        var rollout = rollout
        if let existing = rollouts[rollout.name] {
            rollout.created = existing.rollout.created
            if existing.rollout == rollout { return existing }
        } else {
            guard rollouts.count < Self.maxRollouts else {
                throw APIError(
                    status: .conflict,
                    message: "the controller holds its limit of \(Self.maxRollouts) rollouts"
                )
            }
            rollout.created = registry.revision
        }
        if let other = rollouts.values.first(where: {
            $0.rollout.name != rollout.name && $0.rollout.service == rollout.service && !$0.status.isTerminal
        }) {
            throw APIError(
                status: .conflict,
                message:
                    "rollout \"\(other.rollout.name)\" is moving \(rollout.service) already: finish or abort it first"
            )
        }
        // Its route must be able to take the service's requests: refused before anything
        // happens when another route already takes every one of them (older wins a tie).
        for route in registry.routes.values.sorted(by: { $0.name < $1.name })
        where route.parents.contains(rollout.service) && route.name != rollout.routeName
            && !route.name.hasPrefix("rollout-")
        {
            if let index = route.rules.firstIndex(where: { $0.matches.isEmpty || $0.matches.contains(RouteMatch()) }) {
                throw APIError(
                    status: .conflict,
                    message:
                        "route \"\(route.name)\" rules[\(index)] takes every request of \(rollout.service) before the rollout's route could: give it matches or delete it"
                )
            }
        }
        if registry.routes[rollout.routeName] == nil, registry.routes.count >= Self.maxRoutes {
            throw APIError(status: .conflict, message: "the registry holds its limit of \(Self.maxRoutes) routes")
        }
        let (status, effects) = RolloutStatus.start(rollout, now: now)
        var entry = RolloutEntry(rollout: rollout, status: status)
        try carryOut(effects, &entry, now: now)
        try await settle(entry)
        logger.info("rollout started", metadata: ["rollout": "\(rollout.name)", "service": "\(rollout.service)"])
        // It replaces a finished rollout of the service: that one's route goes once this
        // one's is written (until then the older route, still in place, decides).
        for other in rollouts.values
        where other.rollout.name != rollout.name && other.rollout.service == rollout.service {
            try await deleteRolloutNow(other.rollout.name)
            logger.info("rollout replaced", metadata: ["rollout": "\(other.rollout.name)", "by": "\(rollout.name)"])
        }
        return rollouts[rollout.name] ?? entry
    }

    /// Deletes a rollout and its route: the service's callers go back to its other routes
    /// and its balancer over every instance.
    func deleteRollout(_ name: String) async throws {
        try await exclusively { try await deleteRolloutNow(name) }
    }

    private func deleteRolloutNow(_ name: String) async throws {
        guard let entry = rollouts[name] else { throw APIError(status: .notFound, message: "no rollout \"\(name)\"") }
        var write = StoreWrite()
        write.delete(RegistryDocuments.key(rollout: name))
        if registry.routes[entry.rollout.routeName] != nil {
            write.delete(RegistryDocuments.key(route: entry.rollout.routeName))
        }
        _ = try await commit(write)
        webhookCalls[name] = nil
    }

    /// An operator's command (promote, abort, retry, pause, resume).
    func command(
        _ name: String,
        _ event: RolloutEvent,
        now: Int64 = Controller.wallClock()
    ) async throws
        -> RolloutEntry
    {
        try await exclusively {
            guard var entry = rollouts[name] else {
                throw APIError(status: .notFound, message: "no rollout \"\(name)\"")
            }
            let effects = entry.status.handle(event, entry.rollout, now: now)
            try carryOut(effects, &entry, now: now)
            try await settle(entry)
            return rollouts[name] ?? entry
        }
    }

    /// One step of every rollout that is not finished: the clock, and the measurements it
    /// asks for, from `telemetry`.
    func driveRollouts(telemetry: TelemetryStore, now: Int64 = Controller.wallClock()) async {
        guard term != nil else { return }
        // (Their instances' reports are kept by the second while rollouts analyse them.)
        telemetry.analyse(services: Set(rollouts.values.filter { !$0.status.isTerminal }.map(\.rollout.service)))
        for name in rollouts.keys.sorted() {
            try? await exclusively { await driveRollout(name, telemetry: telemetry, now: now) }
        }
    }

    private func driveRollout(_ name: String, telemetry: TelemetryStore, now: Int64) async {
        // Fenced: a write of a term that no longer leads does not land.
        guard let fence = term, var entry = rollouts[name] else { return }
        guard !entry.status.isTerminal else {
            // (A finished rollout's route still follows its versions' instances.)
            do { try await writeRoute(entry, fence: fence) } catch {
                logger.error("rollout route not written", metadata: ["rollout": "\(name)", "error": "\(error)"])
            }
            return
        }
        let before = entry.status
        let effects = entry.status.handle(.tick, entry.rollout, now: now)
        do {
            try carryOut(effects, &entry, now: now, telemetry: telemetry)
            // (The route too follows the canary's instances coming and going.)
            if entry.status != before {
                try await settle(entry, fence: fence)
            } else {
                try await writeRoute(entry, fence: fence)
            }
        } catch {
            logger.error("rollout step not stored", metadata: ["rollout": "\(name)", "error": "\(error)"])
        }
    }

    static let maxRollouts = 1000

    /// Measurements are answered at once, from the canary instances' own reports.
    private func carryOut(
        _ effects: [RolloutEffect],
        _ entry: inout RolloutEntry,
        now: Int64,
        telemetry: TelemetryStore? = nil
    ) throws {
        var pending = effects
        while !pending.isEmpty {
            let effect = pending.removeFirst()
            switch effect {
            case .measure(let analysis, let since):
                guard let telemetry else {
                    // (Only the clock's beat measures: the next tick asks again.)
                    entry.status.measuring = false
                    continue
                }
                let rollout = entry.rollout
                let canaries = Set(
                    registry.instances.values.filter { $0.service == rollout.service && $0.version == rollout.canary }
                        .map(\.id)
                )
                let seconds = Int((now - since + 999) / 1000)
                // (Per route: the callers' view of that rule's share to the canary.)
                let figures = telemetry.figures(
                    service: rollout.service,
                    instances: canaries,
                    windowSeconds: seconds,
                    rule: analysis.route.map { "\(rollout.routeName)/\($0)" },
                    backend: analysis.route.map { _ in
                        RouteBackend(service: rollout.service, version: rollout.canary).clusterName
                    }
                )
                logger.info(
                    "rollout analysis",
                    metadata: [
                        "rollout": "\(rollout.name)", "requests": "\(figures.requests)",
                        "successRate": "\(figures.successRate.map { String($0) } ?? "-")",
                        "p99Ms": "\(figures.p99.map { String($0) } ?? "-")", "canaries": "\(canaries.count)",
                        "wanted": "\(analysis.successRate.map { String($0) } ?? "-")",
                    ]
                )
                metrics?.analysed(AnalysisOutcome(figures, against: analysis))
                pending += entry.status.handle(.measured(figures), rollout, now: now)
            case .callWebhook(let kind, let url):
                callWebhook(kind, url: url, entry)
            }
        }
    }

    /// Commits the status (conditional on the rollout's document being the one this
    /// controller read: a write another controller made first wins), then writes the route
    /// it implies when that changed.
    private func settle(_ entry: RolloutEntry, fence: StoreTerm? = nil) async throws {
        let name = entry.rollout.name
        let previous = rollouts[name]
        if previous != entry {
            var write = StoreWrite(
                conditions: [.unchanged(RegistryDocuments.key(rollout: name), since: rolloutRevisions[name] ?? 0)],
                fence: fence
            )
            write.put(RegistryDocuments.key(rollout: name), try RegistryDocuments.rolloutBody(entry))
            _ = try await commit(write)
        }
        if previous?.status.phase != entry.status.phase { metrics?.rolloutEntered(entry.status.phase) }
        if previous?.status.phase != entry.status.phase || previous?.status.step != entry.status.step {
            logger.info(
                "rollout",
                metadata: [
                    "rollout": "\(name)", "phase": "\(entry.status.phase.rawValue)",
                    "step": "\(entry.status.step)", "weight": "\(entry.status.weight)",
                    "message": "\(entry.status.message)",
                ]
            )
        }
        try await writeRoute(entry, fence: fence)
    }

    /// The route the status implies, written when it differs from the stored one. It never
    /// points callers at nobody: while the canary has no serving instance its share, header
    /// route and mirror stay with stable (in every phase, Promoted too); while stable has
    /// none, its share goes to the whole service (a misspelt `stable` behaves as no rollout,
    /// never as an outage or as all traffic on the canary).
    private func writeRoute(_ entry: RolloutEntry, fence: StoreTerm? = nil) async throws {
        let rollout = entry.rollout
        func serves(_ version: String) -> Bool {
            registry.instances.values.contains {
                $0.service == rollout.service && $0.version == version && $0.isServing
            }
        }
        var effective = entry.status
        if !serves(rollout.canary) {
            effective.weight = 0
            effective.headerStep = nil
            effective.mirror = 0
        }
        var route = effective.route(for: rollout)
        if !serves(rollout.stable), var split = route.rules.last, !split.backends.isEmpty {
            split.backends[0] = RouteBackend(service: rollout.service, weight: split.backends[0].weight)
            route.rules[route.rules.count - 1] = split
        }
        if let stored = registry.routes[route.name] {
            route.created = stored.created
            if stored == route { return }
        }
        _ = try await putRouteNow(route, fence: fence)
    }

    /// Writes every rollout's route again (at start: one that stopped between committing
    /// a status and writing its route), and asks again a webhook it was waiting for.
    /// Each rollout is read inside its own turn, as it is then: one changed by an operator
    /// (or by the previous leader's last step) while an earlier one was restored is not
    /// written back as it was.
    func restoreRolloutRoutes() async {
        for name in rollouts.keys.sorted() {
            let current: RolloutEntry?
            do {
                current = try await exclusively { () async throws -> RolloutEntry? in
                    guard var entry = rollouts[name] else { return nil }
                    // This controller's telemetry starts now: an analysis under way
                    // measures a new window (the last one's reports went to another
                    // process, or to this one before it restarted).
                    _ = entry.status.handle(.restored, entry.rollout, now: Controller.wallClock())
                    try await settle(entry, fence: term)
                    return rollouts[name]
                }
            } catch {
                logger.error("rollout route not restored", metadata: ["rollout": "\(name)"])
                continue
            }
            guard let entry = current else { continue }
            if let kind = entry.status.awaiting {
                let hooks = entry.rollout.webhooks
                let url =
                    kind == .preRollout ? hooks.preRollout : kind == .confirmPromotion ? hooks.confirmPromotion : nil
                if let url { callWebhook(kind, url: url, entry) }
            }
        }
    }

    /// POSTs the rollout's state to a webhook (its own task: the controller goes on), with
    /// the rollout's timeout and retries; a 2xx answer accepts. The pre-rollout and
    /// confirm-promotion answers come back as events; a rollback is told only.
    private func callWebhook(_ kind: RolloutWebhookKind, url: String, _ entry: RolloutEntry) {
        let hooks = entry.rollout.webhooks
        let body: [String: Any] = [
            "hook": kind.rawValue, "rollout": entry.rollout.name, "service": entry.rollout.service,
            "stable": entry.rollout.stable, "canary": entry.rollout.canary, "phase": entry.status.phase.rawValue,
            "step": entry.status.step, "weight": entry.status.weight, "message": entry.status.message,
        ]
        let payload = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        let name = entry.rollout.name
        let logger = self.logger
        let call = UUID()
        if kind != .rollback { webhookCalls[name] = call }
        Task {
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.headers.add(name: "user-agent", value: "meshwork-controller")
            var outcome = (accepted: false, message: "")
            for attempt in 0...hooks.retries {
                request.body = .bytes(payload)
                do {
                    let response = try await HTTPClient.shared.execute(
                        request,
                        timeout: .nanoseconds(
                            hooks.timeout.components.seconds * 1_000_000_000 + hooks.timeout.components.attoseconds
                                / 1_000_000_000
                        )
                    )
                    // Read (bounded) and dropped: only the status decides.
                    _ = try? await response.body.collect(upTo: 64 << 10)
                    if (200..<300).contains(response.status.code) {
                        outcome = (true, "answered \(response.status.code)")
                        break
                    }
                    outcome = (false, "answered \(response.status.code)")
                } catch {
                    outcome = (false, "\(error)")
                }
                if attempt < hooks.retries { try? await Task.sleep(for: .seconds(1)) }
            }
            logger.info(
                "rollout webhook",
                metadata: [
                    "rollout": "\(name)", "hook": "\(kind.rawValue)", "accepted": "\(outcome.accepted)",
                    "answer": "\(outcome.message)",
                ]
            )
            guard kind != .rollback else { return }
            await self.webhookAnswered(name, call, kind, accepted: outcome.accepted, message: outcome.message)
        }
    }

    private func webhookAnswered(
        _ name: String,
        _ call: UUID,
        _ kind: RolloutWebhookKind,
        accepted: Bool,
        message: String
    ) async {
        do {
            try await exclusively {
                guard webhookCalls[name] == call, var entry = rollouts[name] else { return }
                webhookCalls[name] = nil
                let now = Self.wallClock()
                let effects = entry.status.handle(
                    .webhook(kind, accepted: accepted, message: message),
                    entry.rollout,
                    now: now
                )
                try carryOut(effects, &entry, now: now)
                // Fenced while this controller leads: a leader paused past its lease that
                // wakes to a webhook's answer cannot act on it.
                try await settle(entry, fence: term)
            }
        } catch {
            logger.error("rollout step not stored", metadata: ["rollout": "\(name)", "error": "\(error)"])
        }
    }
}
