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
                "policy": {"type": "object", "description": "connectTimeout, requestTimeout, balancer, hashOn, zoneAware, outlierDetection, circuitBreakers, retries, adaptiveThrottling, slowStart, subsetSize: as in docs/configuration.md"}}},
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
              "TokenRequest": {"type": "object", "description": "a join token (service) or an operator token (kind: operator, scope)", "properties": {
                "kind": {"enum": ["join", "operator"], "default": "join"},
                "service": {"type": "string", "description": "join tokens: the service"},
                "scope": {"enum": ["read", "write"], "description": "operator tokens"},
                "ttl": {"type": "string", "description": "how long the token can be used (join: 1s to 30 days, default 1h; operator: up to 365 days, default 720h)"},
                "uses": {"type": "integer", "minimum": 1, "default": 1}}},
              "CertificateRequest": {"type": "object", "required": ["csr"], "description": "with a join token (first certificate), or with the current certificate and a proof (renewal)", "properties": {
                "csr": {"type": "string", "description": "PEM PKCS#10 request for an EC P-256 or P-384 key"},
                "token": {"type": "string", "description": "join token"},
                "certificate": {"type": "string", "description": "current certificate chain, PEM (renewal)"},
                "proof": {"type": "string", "description": "base64 ECDSA-SHA256 signature over the CSR's DER by the current certificate's key (renewal)"},
                "ttl": {"type": "string", "description": "requested lifetime, capped by the controller's --cert-ttl"},
                "instance": {"type": "string", "description": "the only instance the returned credential may write"}}},
              "IssuedCertificate": {"type": "object", "properties": {
                "certificate": {"type": "string", "description": "leaf then chain, PEM"},
                "trustBundle": {"type": "string", "description": "the mesh CA roots, PEM"},
                "spiffeID": {"type": "string"},
                "notBefore": {"type": "string", "format": "date-time"},
                "notAfter": {"type": "string", "format": "date-time"},
                "issuedAt": {"type": "string", "format": "date-time"},
                "credential": {"type": "string", "description": "bearer credential for the workload's own instance"}}},
              "Rollout": {"type": "object", "required": ["name", "service", "stable", "canary", "steps"], "description": "A progressive rollout: see docs/rollouts.md", "properties": {
                "kind": {"enum": ["Rollout"]},
                "name": {"type": "string", "maxLength": 55},
                "service": {"type": "string"},
                "stable": {"type": "string", "description": "the instances' version that serves now"},
                "canary": {"type": "string", "description": "the instances' version rolled out"},
                "failureLimit": {"type": "integer", "default": 0},
                "inconclusiveLimit": {"type": "integer", "default": 3},
                "steps": {"type": "array", "maxItems": 64, "items": {"type": "object", "description": "one of setWeight (0-100), pause {duration?}, analysis {successRate?, p99?, interval, minRequests, count}, setHeaderRoute {match: [header matches]}, setMirrorRoute {percent}"}},
                "status": {"type": "object", "readOnly": true, "description": "phase (Pending, Progressing, Paused, Promoted, Degraded, Aborted), step, weight, headerStep, mirror, figures {requests, successRate, p99}, message, history"},
                "route": {"type": "string", "readOnly": true, "description": "the route it writes: rollout-<name>"}
              }},
              "HTTPRoute": {"type": "object", "required": ["name", "parentRefs"], "description": "Gateway API HTTPRoute/GRPCRoute shape, applied by the callers of each parent service and by each parent gateway: see docs/routes.md", "properties": {
                "kind": {"enum": ["HTTPRoute", "GRPCRoute"], "default": "HTTPRoute"},
                "name": {"type": "string"},
                "created": {"type": "integer", "description": "the revision it was created at (its age: the precedence tie-break); set by the controller"},
                "parentRefs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "description": "a mesh service, or a gateway's service name"}, "kind": {"enum": ["Service", "Gateway"], "default": "Service"}, "sectionName": {"type": "string", "description": "Gateway: one listener (none: every HTTP and HTTPS listener)"}, "port": {"type": "integer", "description": "Service only"}}}},
                "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string"}, "description": "at a gateway: the request's host is one of these (exact, or *.suffix for names below it); ignored by mesh callers"},
                "rules": {"type": "array", "maxItems": 64, "items": {"type": "object", "properties": {
                  "name": {"type": "string", "description": "1 to 63 lower-case letters, digits or '-', unique in the route"},
                  "matches": {"type": "array", "maxItems": 16, "items": {"type": "object", "description": "path {type: Exact|PathPrefix|RegularExpression, value}, headers [{type: Exact|RegularExpression|Present|Absent, name, value}], queryParams [{type: Exact|RegularExpression, name, value}], method; GRPCRoute: method {service, method}, headers"}},
                  "filters": {"type": "array", "items": {"type": "object", "description": "type: RequestHeaderModifier | ResponseHeaderModifier | URLRewrite | RequestRedirect | RequestMirror | Fault, with its field of the same name (lower camel case)"}},
                  "backendRefs": {"type": "array", "maxItems": 16, "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}, "weight": {"type": "integer", "minimum": 0, "default": 1}}}},
                  "timeouts": {"type": "object", "properties": {"request": {"type": "string"}, "backendRequest": {"type": "string"}}},
                  "retry": {"type": "object", "properties": {"attempts": {"type": "integer", "minimum": 0, "maximum": 10}, "codes": {"type": "array", "items": {"type": "integer", "minimum": 500, "maximum": 599}}, "backoff": {"type": "string"}}}}}},
                "status": {"type": "object", "readOnly": true, "description": "answered, computed from the registry at the read; ignored by PUT", "properties": {"conditions": {"type": "array", "items": {"type": "object", "properties": {"type": {"enum": ["Accepted", "ResolvedRefs", "Conflicted"]}, "status": {"enum": ["True", "False"]}, "reason": {"type": "string"}, "message": {"type": "string"}}}}}}}},
              "AuthorizationPolicy": {"type": "object", "required": ["name", "target"], "description": "a matching deny refuses; else, when the target has allow policies, one must match; else the mesh default decides", "properties": {
                "name": {"type": "string"},
                "target": {"type": "string", "description": "the service whose sidecars enforce it"},
                "action": {"enum": ["allow", "deny"], "default": "allow"},
                "from": {"type": "array", "items": {"type": "string"}, "description": "SPIFFE IDs, spiffe://<trust-domain>/* or * (any authenticated caller); empty: anyone"},
                "ports": {"type": "array", "items": {"type": "integer"}},
                "paths": {"type": "array", "items": {"type": "string"}, "description": "path prefixes"},
                "methods": {"type": "array", "items": {"type": "string"}}}},
              "Mesh": {"type": "object", "properties": {"defaultAuthorization": {"enum": ["allow", "deny"], "default": "allow"}, "requireMTLS": {"type": "boolean", "default": false, "description": "every sidecar refuses plaintext peers; one without an identity refuses to start"}}},
              "TelemetryReport": {"type": "object", "required": ["service", "seconds", "edges"], "properties": {
                "service": {"type": "string", "description": "the instance's service"},
                "seconds": {"type": "number", "description": "the interval covered"},
                "edges": {"type": "array", "maxItems": 256, "items": {"type": "object", "required": ["direction", "peer", "classes", "latency"], "properties": {
                  "direction": {"enum": ["inbound", "outbound"]},
                  "peer": {"type": "string", "description": "inbound: the calling service (unauthenticated without mTLS); outbound: the called service"},
                  "classes": {"type": "array", "items": {"type": "integer"}, "minItems": 5, "maxItems": 5, "description": "responses 1xx to 5xx"},
                  "latency": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}, "description": "HdrHistogram buckets: [microseconds, count]"}}}}}},
              "GoldenMetrics": {"type": "object", "properties": {
                "requests": {"type": "integer"}, "failures": {"type": "integer", "description": "5xx"},
                "rps": {"type": "number"}, "successRate": {"type": "number"},
                "p50Ms": {"type": "number"}, "p95Ms": {"type": "number"}, "p99Ms": {"type": "number"}}},
              "WatchLine": {"type": "object", "description": "One NDJSON line: {type: trust-bundle, trustBundle, activeRoot} (first on every connection, and on every CA rotation step) | {type: snapshot, revision, services, instances, policies, mesh, routes} | {type: event, revision, kind: service-put|service-deleted|instance-put|instance-deleted|policy-put|policy-deleted|mesh-put|route-put|route-deleted, service?, instance?, policy?, mesh?, route?} | {type: ping, revision}"}
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
              {"name": "revision", "in": "query", "description": "resume after this revision: the missed events, or a snapshot when the history no longer has them", "schema": {"type": "integer"}},
              {"name": "routes", "in": "query", "description": "1: the watcher reads routes (route-put/route-deleted events, routes in the snapshot); without it none are sent", "schema": {"enum": ["1"]}}],
              "responses": {"200": {"description": "a stream of WatchLine", "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/WatchLine"}}}}}}}
            ,
            "/v1/tokens": {
              "get": {"summary": "List join tokens (without secrets)", "security": [{"bearer": []}], "responses": {"200": {"description": "tokens"}, "403": {"description": "not an operator"}}},
              "post": {"summary": "Create a join token for one service", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}}}, "responses": {"200": {"description": "the token (shown once)"}, "400": {"description": "invalid", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an operator"}}}
            },
            "/v1/tokens/{id}": {
              "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
              "delete": {"summary": "Revoke a join token", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted"}, "404": {"description": "unknown"}}}
            },
            "/v1/certificates": {"get": {"summary": "When each instance's current workload certificate expires", "responses": {"200": {"description": "expiries", "content": {"application/json": {"schema": {"type": "object", "properties": {"certificates": {"type": "array", "items": {"type": "object", "properties": {"instance": {"type": "string"}, "service": {"type": "string"}, "notAfter": {"type": "string", "format": "date-time"}}}}}}}}}}}, "post": {"summary": "Issue a workload certificate (X.509-SVID) and a sidecar credential", "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/CertificateRequest"}}}}, "responses": {"200": {"description": "issued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IssuedCertificate"}}}}, "400": {"description": "invalid CSR or request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "401": {"description": "join token unknown, used up or expired; renewal proof invalid"}}}},
            "/v1/revocations": {"post": {"summary": "Revoke every unexpired workload certificate issued under an instance, a service or a join token: their credentials are deleted, their renewals refused, and their serials pushed to every sidecar with the trust bundle, so peers refuse them at the next handshake", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "description": "exactly one of instance, service, token", "properties": {"instance": {"type": "string"}, "service": {"type": "string"}, "token": {"type": "string"}}}}}}, "responses": {"200": {"description": "revoked", "content": {"application/json": {"schema": {"type": "object", "properties": {"scope": {"type": "string"}, "value": {"type": "string"}, "revoked": {"type": "array", "items": {"type": "string"}, "description": "serials, hex"}}}}}}, "400": {"description": "not exactly one of instance, service, token"}, "403": {"description": "not an operator with write scope"}}}, "get": {"summary": "The serials (hex) of revoked workload certificates that have not expired", "security": [{"bearer": []}], "responses": {"200": {"description": "the list"}}}},
            "/v1/policies": {"get": {"summary": "List authorization policies", "responses": {"200": {"description": "policies", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/AuthorizationPolicy"}}}}}}}},
            "/v1/policies/{name}": {
              "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
              "get": {"summary": "One policy", "responses": {"200": {"description": "the policy"}, "404": {"description": "unknown"}}},
              "put": {"summary": "Create or replace a policy", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/AuthorizationPolicy"}}}}, "responses": {"200": {"description": "stored"}, "400": {"description": "invalid", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an operator"}}},
              "delete": {"summary": "Delete a policy", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted"}, "404": {"description": "unknown"}}}
            },
            "/v1/routes": {"get": {"summary": "List routes", "responses": {"200": {"description": "routes", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/HTTPRoute"}}}}}}}},
            "/v1/routes/{name}": {
              "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
              "get": {"summary": "One route", "responses": {"200": {"description": "the route"}, "404": {"description": "unknown"}}},
              "put": {"summary": "Create or replace a route", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPRoute"}}}}, "responses": {"200": {"description": "stored (with its age)"}, "400": {"description": "invalid: every field path and reason", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an operator"}}},
              "delete": {"summary": "Delete a route", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted"}, "404": {"description": "unknown"}}}
            },
            "/v1/rollouts": {"get": {"summary": "List rollouts with their status", "responses": {"200": {"description": "rollouts", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}}}}}}},
            "/v1/rollouts/{name}": {
              "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
              "get": {"summary": "One rollout with its status", "responses": {"200": {"description": "the rollout"}, "404": {"description": "unknown"}}},
              "put": {"summary": "Create or replace a rollout (a changed spec starts over)", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rollout"}}}}, "responses": {"200": {"description": "stored, with its status"}, "400": {"description": "invalid: every field path and reason", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "403": {"description": "not an operator"}, "409": {"description": "another rollout is moving the service"}}},
              "delete": {"summary": "Delete a rollout and its route", "security": [{"bearer": []}], "responses": {"200": {"description": "deleted"}, "404": {"description": "unknown"}}}
            },
            "/v1/rollouts/{name}/{command}": {
              "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "command", "in": "path", "required": true, "schema": {"enum": ["promote", "abort", "retry", "pause", "resume"]}}],
              "post": {"summary": "Steer a rollout: promote (past the current step), abort (all to stable), retry (after a rollback), pause, resume", "security": [{"bearer": []}], "responses": {"200": {"description": "the rollout after the command"}, "403": {"description": "not an operator"}, "404": {"description": "unknown rollout or command"}}}
            },
            "/v1/mesh": {
              "get": {"summary": "Mesh-wide settings", "responses": {"200": {"description": "settings", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Mesh"}}}}}},
              "put": {"summary": "Replace the mesh-wide settings", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Mesh"}}}}, "responses": {"200": {"description": "stored"}, "400": {"description": "invalid"}, "403": {"description": "not an operator"}}}
            },
            "/v1/ca": {"get": {"summary": "The mesh CA: active root, and the next or retiring one during a rotation", "responses": {"200": {"description": "status"}}}},
            "/v1/ca/rotate": {"post": {"summary": "One step of a CA rotation: prepare (a new root, generated or given, joins the trust bundle), activate (it signs; sidecars renew), finish (the old root leaves; 409 while its certificates may be valid unless force)", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["step"], "properties": {"step": {"enum": ["prepare", "activate", "finish"]}, "certificate": {"type": "string"}, "key": {"type": "string"}, "force": {"type": "boolean"}}}}}}, "responses": {"200": {"description": "the CA status after the step"}, "409": {"description": "the step does not follow the previous one"}, "403": {"description": "not an operator"}}}},
            "/v1/leader": {"get": {"summary": "Which controller leads (steps rollouts), and whether this one does: with etcd several controllers serve one mesh and one leads", "responses": {"200": {"description": "leadership", "content": {"application/json": {"schema": {"type": "object", "properties": {"leader": {"type": "string", "description": "the leader's name; absent while nobody leads"}, "leading": {"type": "boolean"}, "term": {"type": "integer", "description": "the store revision this controller's term began at, when it leads"}, "store": {"enum": ["sqlite", "etcd"]}}}}}}}}},
            "/v1/trust-bundle": {"get": {"summary": "The mesh CA roots", "responses": {"200": {"description": "PEM", "content": {"application/x-pem-file": {}}}}}},
            "/v1/instances/{id}/telemetry": {
              "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
              "post": {"summary": "A sidecar's per-edge report for the last interval", "security": [{"bearer": []}], "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/TelemetryReport"}}}}, "responses": {"204": {"description": "stored"}, "400": {"description": "invalid", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "unknown instance"}}}
            },
            "/v1/stats": {"get": {"summary": "Golden metrics per service and instance over a window (server side)", "parameters": [
              {"name": "window", "in": "query", "description": "10s to 10m, default 1m", "schema": {"type": "string"}},
              {"name": "service", "in": "query", "schema": {"type": "string"}}],
              "responses": {"200": {"description": "stats", "content": {"application/json": {"schema": {"type": "object", "properties": {"windowSeconds": {"type": "integer"}, "services": {"type": "array", "items": {"type": "object", "properties": {"service": {"type": "string"}, "metrics": {"$ref": "#/components/schemas/GoldenMetrics"}, "instances": {"type": "array", "items": {"type": "object", "properties": {"instance": {"type": "string"}, "metrics": {"$ref": "#/components/schemas/GoldenMetrics"}}}}}}}}}}}}, "400": {"description": "bad window"}}}},
            "/v1/stats/series": {"get": {"summary": "Per service, each 10-second slot of a window (server side): requests, failures, p50 and p99, oldest first", "parameters": [
                {"name": "window", "in": "query", "description": "10s to 10m, default 10m", "schema": {"type": "string"}}],
              "responses": {"200": {"description": "series", "content": {"application/json": {"schema": {"type": "object", "properties": {"windowSeconds": {"type": "integer"}, "slotSeconds": {"type": "integer"}, "services": {"type": "array", "items": {"type": "object", "properties": {"service": {"type": "string"}, "points": {"type": "array", "items": {"type": "object", "properties": {"secondsAgo": {"type": "integer"}, "requests": {"type": "integer"}, "failures": {"type": "integer"}, "p50Ms": {"type": "number"}, "p99Ms": {"type": "number"}}}}}}}}}}}}, "400": {"description": "bad window"}}}},
            "/v1/tap": {"get": {"summary": "Live request metadata from every instance of a service (sampled and rate-limited in its sidecars), NDJSON: first {tapping, failed}, then one event per line, and an empty line every 2 s while quiet (a keepalive: a reader that went away is noticed and the sidecars' taps closed)", "parameters": [
                {"name": "service", "in": "query", "required": true, "schema": {"type": "string"}},
                {"name": "path", "in": "query", "description": "path prefix", "schema": {"type": "string"}},
                {"name": "status", "in": "query", "description": "a class (5xx) or a code (503)", "schema": {"type": "string"}},
                {"name": "method", "in": "query", "schema": {"type": "string"}},
                {"name": "direction", "in": "query", "schema": {"enum": ["inbound", "outbound"]}},
                {"name": "peer", "in": "query", "schema": {"type": "string"}},
                {"name": "sample", "in": "query", "schema": {"type": "number"}},
                {"name": "rate", "in": "query", "description": "events per second per sidecar, 1 to 1000 (default 100)", "schema": {"type": "number"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
              "responses": {"200": {"description": "the stream", "content": {"application/x-ndjson": {"schema": {"type": "object", "properties": {"time": {"type": "string"}, "direction": {"type": "string"}, "source": {"type": "string"}, "target": {"type": "string"}, "method": {"type": "string"}, "path": {"type": "string"}, "status": {"type": "integer"}, "latencyMs": {"type": "number"}, "meshError": {"type": "string"}, "traceId": {"type": "string"}}}}}}, "400": {"description": "bad filter", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}, "404": {"description": "no instance of the service can be tapped"}}}},
            "/v1/edges": {"get": {"summary": "Golden metrics per caller -> callee edge over a window", "parameters": [
              {"name": "window", "in": "query", "description": "10s to 10m, default 1m", "schema": {"type": "string"}}],
              "responses": {"200": {"description": "edges", "content": {"application/json": {"schema": {"type": "object", "properties": {"windowSeconds": {"type": "integer"}, "edges": {"type": "array", "items": {"type": "object", "properties": {"source": {"type": "string"}, "target": {"type": "string"}, "mtls": {"type": "boolean"}, "metrics": {"$ref": "#/components/schemas/GoldenMetrics"}}}}}}}}}, "400": {"description": "bad window"}}}}
          }
        }
        """#
}
