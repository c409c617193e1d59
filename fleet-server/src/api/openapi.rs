//! The OpenAPI 3.1 document, made from the route table so it cannot drift from the router.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::{Api, ROUTES};

pub(super) async fn document(State(_): State<Api>) -> Json<Value> {
    Json(build())
}

/// The document.
pub fn build() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let problem = json!({ "$ref": "#/components/schemas/Problem" });
    for route in ROUTES {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let ok = if route.method == "POST"
            && matches!(
                route.response,
                "EnrollResponse"
                    | "ReleaseRecord"
                    | "RolloutView"
                    | "TokenResponse"
                    | "GroupChange"
            ) {
            "201"
        } else {
            "200"
        };
        let mut responses = Map::new();
        responses.insert(
            ok.to_owned(),
            json!({ "description": route.response, "content": { "application/json": { "schema": schema_ref(route.response, &mut schemas) } } }),
        );
        for (code, why) in [
            ("400", "the request is malformed"),
            ("401", "no token, or an unknown, expired or revoked one"),
            ("403", "the token's role is not enough"),
            ("404", "no such thing"),
            ("409", "conflicts with the fleet's state"),
            ("422", "validation failed; `errors` lists every field"),
        ] {
            if route.role.is_none() && matches!(code, "401" | "403") {
                continue;
            }
            responses.insert(code.to_owned(), json!({ "description": why, "content": { "application/problem+json": { "schema": problem.clone() } } }));
        }
        let mut operation = json!({
            "summary": route.summary,
            "parameters": params,
            "responses": responses,
            "x-fleet-role": route.role.map(|r| r.as_str()),
        });
        if route.role.is_some() {
            operation["security"] = json!([{ "bearer": [] }]);
        }
        if route.request == Some("SecretValue") {
            // The value itself, as bytes: never JSON, never a string that might be logged.
            operation["requestBody"] = json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "maxLength": crate::secrets::MAX_VALUE_BYTES } } } });
        } else if let Some(request) = route.request {
            operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema_ref(request, &mut schemas) } } });
        }
        let entry = paths.entry(route.path.to_owned()).or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = operation;
    }
    schemas.insert(
        "Problem".to_owned(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["status", "title", "detail"],
            "properties": {
                "status": { "type": "integer" },
                "title": { "type": "string" },
                "detail": { "type": "string", "description": "what was wrong and what to do next" },
                "errors": { "type": "array", "items": { "type": "object", "properties": { "path": { "type": "string" }, "reason": { "type": "string" } } } }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Fleet server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, groups, releases, pins and staged rollouts. Tokens are `Authorization: Bearer NAME.SECRET`; roles nest viewer < operator < admin (each operation's `x-fleet-role`). Lists are paged with ?limit=&after=."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}

/// A reference to a named schema (declared as an object; `T[]` is an array of them).
fn schema_ref(name: &str, schemas: &mut Map<String, Value>) -> Value {
    let (item, array) = match name.strip_suffix("[]") {
        Some(item) => (item, true),
        None => (name, false),
    };
    let item = item.replace(['<', '>'], "_").trim_end_matches('_').to_owned();
    schemas.entry(item.clone()).or_insert_with(|| json!({ "type": "object", "title": name }));
    let reference = json!({ "$ref": format!("#/components/schemas/{item}") });
    if array {
        json!({ "type": "array", "items": reference })
    } else {
        reference
    }
}
