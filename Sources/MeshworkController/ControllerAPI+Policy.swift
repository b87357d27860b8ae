import Hummingbird
import MeshworkModel

extension ControllerAPI {
    /// Authorization policies (`/v1/policies`), routes (`/v1/routes`) and the mesh-wide
    /// settings (`/v1/mesh`):
    /// readable by all, written by the operator only.
    func addPolicyRoutes(to v1: RouterGroup<BasicRequestContext>) {
        v1.get("policies") { _, _ in try await json(controller.policies()) }
        v1.get("policies/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let policy = await controller.policy(name) else {
                throw APIError(status: .notFound, message: "no policy \"\(name)\"")
            }
            return try json(policy)
        }
        v1.put("policies/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            var request = request
            let text = try await body(&request)
            let policy = try validated { () throws(ConfigErrors) in try AuthorizationPolicy.parse(text, name: name) }
            let revision = try await controller.putPolicy(policy)
            return try json(policy, revision: revision)
        }
        v1.delete("policies/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            do {
                return try json(Revision(revision: try await controller.deletePolicy(name)))
            } catch RegistryError.notFound(let what) {
                throw APIError(status: .notFound, message: "no \(what)")
            }
        }
        v1.get("routes") { _, _ in try await json(controller.routes()) }
        v1.get("routes/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let route = await controller.route(name) else {
                throw APIError(status: .notFound, message: "no route \"\(name)\"")
            }
            return try json(route)
        }
        v1.put("routes/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            var request = request
            let text = try await body(&request)
            let route = try validated { () throws(ConfigErrors) in try HTTPRoute.parse(text, name: name) }
            let (stored, revision) = try await controller.putRoute(route)
            return try json(stored, revision: revision)
        }
        v1.delete("routes/:name") { request, context in
            try await authorizeOperator(request)
            let name = try context.parameters.require("name")
            do {
                return try json(Revision(revision: try await controller.deleteRoute(name)))
            } catch RegistryError.notFound(let what) {
                throw APIError(status: .notFound, message: "no \(what)")
            }
        }
        v1.get("mesh") { _, _ in try await json(controller.mesh) }
        v1.put("mesh") { request, _ in
            try await authorizeOperator(request)
            var request = request
            let text = try await body(&request)
            let settings = try validated { () throws(ConfigErrors) in try MeshSettings.parse(text) }
            let revision = try await controller.putMesh(settings)
            return try json(settings, revision: revision)
        }
    }
}
