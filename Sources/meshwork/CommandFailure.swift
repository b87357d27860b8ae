/// A failure the command reports in one line (no usage text): bad config files,
/// unreadable paths. ArgumentParser prints `Error: <description>` and exits non-zero.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}
