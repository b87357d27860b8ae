import Logging
import ServiceLifecycle

/// One controller leads (issue 20): it alone steps rollouts. Its term is a store lease it
/// keeps alive; every write of that work is fenced by the term, so a leader that was
/// paused past its lease (and replaced) cannot write when it wakes: the store refuses.
/// With SQLite the one controller leads from the start.
extension Controller {
    var isLeading: Bool { term != nil }

    struct Leadership: Encodable {
        var leader: String?
        var leading: Bool
        var term: Int64?
        var store: String
    }

    /// Who leads, as the store says, and whether this controller does.
    func leadership() async throws -> Leadership {
        let leader = try await storeCall { try await store.leader() }
        return Leadership(
            leader: leader,
            leading: term != nil,
            term: term?.revision,
            store: store is EtcdStore ? "etcd" : "sqlite"
        )
    }

    /// Takes the lead in `term`: rollout routes are written again from their stored status
    /// (a leader that stopped between committing a status and its route), and the
    /// webhooks a rollout waits for are called again.
    func lead(_ term: StoreTerm) async {
        self.term = term
        logger.notice("leading", metadata: ["term": "\(term.revision)", "candidate": "\(term.candidate)"])
        await restoreRolloutRoutes()
    }

    func stepDown(_ reason: String) {
        guard let term else { return }
        self.term = nil
        webhookCalls.removeAll()
        logger.warning("no longer leading", metadata: ["term": "\(term.revision)", "reason": "\(reason)"])
    }
}

extension ControllerServer {
    /// Campaigns, leads while the lease is renewed, and campaigns again when it is lost;
    /// at shutdown it revokes the lease so another controller leads at once.
    static func lead(
        store: any ControllerStore,
        controller: Controller,
        name: String,
        ttl: Duration,
        advertise: @Sendable () async -> String? = { nil },
        logger: Logger
    ) async {
        let seconds = max(1, ttl.components.seconds)
        let clock = ContinuousClock()
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            var lease: Int64 = 0
            do {
                lease = try await store.grantLease(ttl: seconds)
                let candidacy = lease
                // Where this controller listens, for as long as it takes part: a follower
                // relays telemetry to the leader's URL.
                if let url = await advertise() {
                    var write = StoreWrite()
                    try write.put(StoreKey(.member, name), json: MemberDocument(url: url), lease: candidacy)
                    do {
                        _ = try await store.commit(write)
                    } catch {
                        logger.warning("cannot publish this controller's URL", metadata: ["error": "\(error)"])
                    }
                }
                // A candidate keeps its lease alive while it waits, so it can lead the
                // moment the leader's key goes.
                let renewal = Task {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(seconds) / 3)
                        if (try? await store.keepAlive(candidacy)) == false { return }
                    }
                }
                defer { renewal.cancel() }
                let term = try await cancelWhenGracefulShutdown {
                    try await store.campaign(candidate: name, lease: candidacy)
                }
                // The candidacy renewals go on while the new leader restores what it
                // leads (a commit per rollout), which may take longer than a third of
                // the lease.
                await controller.lead(term)
                renewal.cancel()
                var renewed = clock.now
                // Renewed three times a lease; leading ends before the lease could have
                // run out (two thirds of it without a renewal), not after.
                while !Task.isShuttingDownGracefully {
                    try await Task.sleep(for: .seconds(seconds) / 3)
                    do {
                        guard try await store.keepAlive(lease) else {
                            await controller.stepDown("the lease ended")
                            break
                        }
                        renewed = clock.now
                    } catch {
                        if clock.now - renewed >= .seconds(seconds) * 2 / 3 {
                            await controller.stepDown("the lease could not be renewed: \(error)")
                            break
                        }
                    }
                }
            } catch {
                if !(error is CancellationError) {
                    logger.warning("leader election failed: trying again", metadata: ["error": "\(error)"])
                }
            }
            if Task.isShuttingDownGracefully || Task.isCancelled {
                await controller.stepDown("shutting down")
                if lease != 0 { try? await store.revokeLease(lease) }
                return
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}
