import MeshworkTraffic
import Testing

/// The one retry decision, as a value: every failure kind against every fact it depends on.
@Suite struct RetryVerdictTests {
    private func context(
        idempotent: Bool = true,
        sent: Bool = true,
        responseStarted: Bool = false,
        replayable: Bool = true,
        attempt: Int = 0,
        timeLeft: Duration? = .seconds(1)
    ) -> TryContext {
        TryContext(
            idempotent: idempotent,
            requestSent: sent,
            responseStarted: responseStarted,
            replayable: replayable,
            attempt: attempt,
            timeLeft: timeLeft
        )
    }

    /// A budget that counts how often it was asked.
    private final class Budget {
        var asked = 0
        let allows: Bool
        init(allows: Bool = true) { self.allows = allows }
        func take() -> Bool {
            asked += 1
            return allows
        }
    }

    @Test func theDefaultPolicyRetriesWhatNeverReachedTheEndpointWhateverTheMethod() {
        let policy = RetryPolicy()
        let budget = Budget()
        for failure in [TryFailure.connectFailure, .reset] {
            #expect(
                policy.verdict(after: failure, context(idempotent: false, sent: false), budget: budget.take) == .retry
            )
        }
        #expect(budget.asked == 2)
    }

    @Test func aSentPostIsNotRepeatedAfterAResetATimeoutOrA500() {
        let policy = RetryPolicy()
        let budget = Budget()
        for failure in [TryFailure.reset, .perTryTimeout, .status(500), .status(502)] {
            #expect(
                policy.verdict(after: failure, context(idempotent: false), budget: budget.take)
                    == .fail(.notIdempotent),
                "\(failure)"
            )
        }
        #expect(budget.asked == 0, "a refusal for another reason spends no budget")
        // The same failures of a GET are retried.
        for failure in [TryFailure.reset, .perTryTimeout, .status(500)] {
            #expect(policy.verdict(after: failure, context(), budget: budget.take) == .retry, "\(failure)")
        }
    }

    @Test func aServiceThatSaysItsCallsAreSafeToRepeatGetsItsPostsRetried() {
        var policy = RetryPolicy()
        policy.nonIdempotent = true
        for failure in [TryFailure.reset, .perTryTimeout, .status(500)] {
            #expect(policy.verdict(after: failure, context(idempotent: false), budget: { true }) == .retry)
        }
        // The 5xx condition says so for statuses, and a 503 is "did not take it".
        var any = RetryPolicy()
        any.on = [.any5xx]
        #expect(any.verdict(after: .status(500), context(idempotent: false), budget: { true }) == .retry)
        #expect(any.verdict(after: .reset, context(idempotent: false), budget: { true }) == .fail(.notACondition))
        #expect(RetryPolicy().verdict(after: .status(503), context(idempotent: false), budget: { true }) == .retry)
    }

    @Test func onlyTheConditionsThePolicyNamesAreRetried() {
        var policy = RetryPolicy()
        policy.on = [.unavailable]
        #expect(policy.verdict(after: .status(503), context(), budget: { true }) == .retry)
        for failure in [TryFailure.status(500), .perTryTimeout, .reset, .connectFailure] {
            #expect(policy.verdict(after: failure, context(), budget: { true }) == .fail(.notACondition), "\(failure)")
        }
        #expect(policy.verdict(after: .status(404), context(), budget: { true }) == .fail(.notACondition))
        // A reset before a byte left counts as a connect failure.
        policy.on = [.connectFailure]
        #expect(policy.verdict(after: .reset, context(sent: false), budget: { true }) == .retry)
        #expect(policy.verdict(after: .reset, context(sent: true), budget: { true }) == .fail(.notACondition))
        // Per-try timeouts are a condition of their own.
        policy.on = [.reset]
        #expect(policy.verdict(after: .perTryTimeout, context(), budget: { true }) == .fail(.notACondition))
    }

    @Test func nothingIsRetriedOnceTheAnswerStartedOrTheAttemptsAreSpent() {
        let policy = RetryPolicy()
        #expect(
            policy.verdict(after: .reset, context(responseStarted: true), budget: { true }) == .fail(.responseStarted)
        )
        #expect(policy.verdict(after: .reset, context(attempt: 1), budget: { true }) == .retry)
        #expect(policy.verdict(after: .reset, context(attempt: 2), budget: { true }) == .fail(.attemptsSpent))
        var none = RetryPolicy()
        none.attempts = 0
        #expect(none.verdict(after: .connectFailure, context(sent: false), budget: { true }) == .fail(.attemptsSpent))
    }

    @Test func aSentRequestWhoseBodyWasNotKeptIsNotRetried() {
        let budget = Budget()
        #expect(
            RetryPolicy().verdict(after: .status(503), context(replayable: false), budget: budget.take)
                == .fail(.notReplayable)
        )
        #expect(budget.asked == 0)
    }

    @Test func noRetryPastTheDeadlineAndNoneBeyondTheBudget() {
        let policy = RetryPolicy()
        #expect(policy.verdict(after: .reset, context(timeLeft: .zero), budget: { true }) == .fail(.deadline))
        #expect(policy.verdict(after: .reset, context(timeLeft: nil), budget: { true }) == .retry)
        let spent = Budget(allows: false)
        #expect(policy.verdict(after: .reset, context(), budget: spent.take) == .fail(.budget))
        #expect(spent.asked == 1)
    }
}
