import Hummingbird
import MeshworkModel

extension ControllerAPI {
    /// Rollouts (`/v1/rollouts`, docs/rollouts.md): readable by all, written and commanded
    /// by the operator only.
    func addRolloutRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("rollouts") { _, _ in try await json(controller.rolloutEntries()) }
        v1.get("rollouts/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let entry = await controller.rolloutEntry(name) else {
                throw APIError(status: .notFound, message: "no rollout \"\(name)\"")
            }
            return try json(entry)
        }
        v1.put("rollouts/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            var request = request
            let text = try await body(&request)
            let rollout = try validated { () throws(ConfigErrors) in try Rollout.parse(text, name: name) }
            return try json(try await controller.putRollout(rollout))
        }
        v1.delete("rollouts/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            try await controller.deleteRollout(name)
            return try json(Revision(revision: await controller.revision))
        }
        v1.post("rollouts/:name/:command") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            let command = try context.parameters.require("command")
            let event: RolloutEvent
            switch command {
            case "promote": event = .promote
            case "abort": event = .abort
            case "retry": event = .retry
            case "pause": event = .pause
            case "resume": event = .resume
            default:
                throw APIError(
                    status: .notFound,
                    message: "no command \"\(command)\" (promote, abort, retry, pause or resume)"
                )
            }
            return try json(try await controller.command(name, event))
        }
    }
}
