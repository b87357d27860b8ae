/// The API's OpenAPI 3.1 description, served at `/v1/openapi.json` (and kept in
/// docs/api.openapi.json by a test that compares them).
enum OpenAPIDocument {
    static let json = #"""
        {
          "openapi": "3.1.0",
          "info": {"title": "Meshwork controller API", "version": "1"},
          "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
              "Error": {"type": "object", "properties": {
                "error": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                  "field": {"type": "string"}, "reason": {"type": "string"}}}}}},
              "Revision": {"type": "object", "properties": {"revision": {"type": "integer"}}},
              "Service": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "protocol": {"enum": ["http", "tcp"]},
                "ports": {"type": "array", "items": {"type": "object", "properties": {
                  "name": {"type": "string"}, "protocol": {"enum": ["tcp", "udp"]}}}},
                "policy": {"type": "object", "description": "connectTimeout, requestTimeout, balancer, hashOn, zoneAware, outlierDetection, circuitBreakers, retries, adaptiveThrottling: as in docs/configuration.md"}}},
              "Instance": {"type": "object", "required": ["service", "address", "port"], "properties": {
                "id": {"type": "string"},
                "service": {"type": "string"},
                "address": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "zone": {"type": "string"},
                "weight": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 1},
                "version": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                "health": {"enum": ["starting", "healthy", "unhealthy"], "default": "healthy"},
                "ttlSeconds": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 15}}},
              "WatchLine": {"type": "object", "description": "One NDJSON line: {type: snapshot, revision, services, instances} | {type: event, revision, kind: service-put|service-deleted|instance-put|instance-deleted, service?, instance?} | {type: ping, revision}"}
            }
          },
          "paths": {
            "/v1/services": {"get": {"summary": "List services", "responses": {"200": {"description": "services", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}}}}}}}},
            "/v1/services/{name}": {
              "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
              "get": {"summary": "One service", "responses": {"200": {"description": "the service"}, "404": {"description": "unknown"}}},
              "put": {"summary": "Create or replace a service", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Service"}}}}, "responses": {"200": {"description": "stored"}, "400": {"description": "invalid", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "no or wrong token"}}},
              "delete": {"summary": "Delete a service and its instances", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Revision"}}}}, "404": {"description": "unknown"}}}
            },
            "/v1/instances": {"get": {"summary": "List instances", "parameters": [{"name": "service", "in": "query", "schema": {"type": "string"}}], "responses": {"200": {"description": "instances", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}}}}}}}},
            "/v1/instances/{id}": {
              "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
              "get": {"summary": "One instance", "responses": {"200": {"description": "the instance"}, "404": {"description": "unknown"}}},
              "put": {"summary": "Register or update an instance (renews its lease)", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Instance"}}}}, "responses": {"200": {"description": "stored"}, "400": {"description": "invalid"}, "401": {"description": "no or wrong token"}}},
              "delete": {"summary": "Deregister an instance", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted"}, "404": {"description": "unknown"}}}
            },
            "/v1/instances/{id}/heartbeat": {
              "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
              "post": {"summary": "Renew the lease, optionally reporting health", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"health": {"enum": ["starting", "healthy", "unhealthy"]}}}}}}, "responses": {"200": {"description": "renewed"}, "404": {"description": "unknown instance: register again"}}}
            },
            "/v1/watch": {"get": {"summary": "Snapshot then changes, as NDJSON", "parameters": [
              {"name": "services", "in": "query", "description": "comma-separated service names (all when absent)", "schema": {"type": "string"}},
              {"name": "revision", "in": "query", "description": "resume after this revision: the missed events, or a snapshot when the history no longer has them", "schema": {"type": "integer"}}],
              "responses": {"200": {"description": "a stream of WatchLine", "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/WatchLine"}}}}}}}
          }
        }
        """#
}
