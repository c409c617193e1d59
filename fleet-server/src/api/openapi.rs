//! The OpenAPI 3.1 document, generated from the route table and the `fleet-api` types, so it
//! cannot drift from the router or from what handlers take and answer.

use std::sync::OnceLock;

use axum::extract::State;
use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::routes::{Body, ROUTES};
use super::{Api, Problem};

pub(super) async fn document(State(_): State<Api>) -> Json<Value> {
    // Built once: the document is a pure function of this build's types.
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(build).clone())
}

/// The error statuses every operation may answer (besides 401/403 on guarded routes), and why.
const ERRORS: [(&str, &str); 6] = [
    ("400", "the request is malformed: a path parameter, the query or the body is not what the schema says"),
    ("404", "no such thing"),
    ("405", "the path exists, the method does not (the `Allow` header lists those that do)"),
    ("409", "conflicts with the fleet's state"),
    ("413", "the body is larger than allowed"),
    ("422", "validation failed; `errors` lists every field"),
];

/// Answers only some operations give: a command waits on a device through the broker.
const GATEWAY_ERRORS: [(&str, &str, &str); 2] = [
    ("/api/v1/devices/{id}/commands", "503", "the broker is unreachable: the command was not sent"),
    (
        "/api/v1/devices/{id}/commands",
        "504",
        "the device did not answer in time; it will not run the command after that",
    ),
];

/// The document.
pub fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let problem = generator.subschema_for::<Problem>();
    let mut paths = Map::new();
    for route in ROUTES {
        let mut parameters: Vec<Value> = route
            .params
            .iter()
            .map(|(name, schema)| {
                json!({ "name": name, "in": "path", "required": true, "schema": schema(&mut generator) })
            })
            .collect();
        if let Some(query) = route.query {
            parameters.extend(query_parameters(query(&mut generator)));
        }
        let mut responses = Map::new();
        let answer = (route.response)(&mut generator);
        for status in route.ok {
            responses.insert(
                status.to_string(),
                json!({ "description": "success", "content": { "application/json": { "schema": answer } } }),
            );
        }
        let guarded = route.role.is_some();
        let errors = ERRORS.iter().copied().chain(
            [
                ("401", "no token, or an unknown, expired or revoked one"),
                ("403", "the token's role is not enough"),
            ]
            .into_iter()
            .filter(|_| guarded),
        );
        let gateway = GATEWAY_ERRORS
            .iter()
            .filter(|(path, _, _)| *path == route.path)
            .map(|(_, code, why)| (*code, *why));
        for (code, why) in errors.chain(gateway) {
            responses.insert(
                code.to_owned(),
                json!({ "description": why, "content": { "application/problem+json": { "schema": problem } } }),
            );
        }
        let mut operation = json!({
            "operationId": operation_id(route.method, route.path),
            "summary": route.summary,
            "parameters": parameters,
            "responses": responses,
            "x-fleet-role": route.role.map(|r| r.as_str()),
        });
        if guarded {
            operation["security"] = json!([{ "bearer": [] }]);
        }
        match route.body {
            Body::None => {}
            Body::Json(schema) | Body::OptionalJson(schema) => {
                operation["requestBody"] = json!({
                    "required": matches!(route.body, Body::Json(_)),
                    "content": { "application/json": { "schema": schema(&mut generator) } }
                });
            }
            Body::Bytes { max } => {
                // The value itself, as bytes: never JSON, never a string that might be logged.
                operation["requestBody"] = json!({
                    "required": true,
                    "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "minLength": 1, "maxLength": max } } }
                });
            }
        }
        let entry = paths.entry(route.path.to_owned()).or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = operation;
    }
    let schemas = generator.take_definitions(true);
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Fleet server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, groups, releases, pins, variables, secrets and staged rollouts. Tokens are `Authorization: Bearer NAME.SECRET`; roles nest viewer < operator < admin (each operation's `x-fleet-role`). Lists are paged with ?limit=&after=. Every error is RFC 9457 problem details."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    });
    integer_bounds(&mut document);
    document
}

/// Integers get the maximum of their Rust type (schemars states only the minimum), so no
/// schema-valid number overflows what the server parses.
fn integer_bounds(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let maximum = match object.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u64::from(u8::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint64" | "uint") => Some(u64::MAX),
                _ => None,
            };
            if let Some(maximum) = maximum {
                object.entry("maximum").or_insert(json!(maximum));
            }
            object.values_mut().for_each(integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(integer_bounds),
        _ => {}
    }
}

/// A query object's properties as OpenAPI query parameters.
fn query_parameters(object: Schema) -> Vec<Value> {
    let mut object = object.to_value();
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(not_null);
    }
    if object.get("not").is_some() {
        // A rule across parameters (`group` or `device`, not both): OpenAPI can state it only
        // on the parameters as one object, sent as one query parameter per property.
        return vec![json!({
            "name": "scope",
            "in": "query",
            "style": "form",
            "explode": true,
            "schema": object,
        })];
    }
    let required: Vec<&str> = object["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = object["properties"].as_object() else { return Vec::new() };
    properties
        .iter()
        .map(|(name, schema)| {
            let mut schema = schema.clone();
            let description = schema.as_object_mut().and_then(|s| s.remove("description"));
            json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "description": description,
                "schema": schema,
            })
        })
        .collect()
}

/// An optional query parameter is absent, never `null` (which would be the text "null").
fn not_null(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else { return };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            object.insert("type".to_owned(), only);
        }
    }
    if let Some(Value::Array(any)) = object.get("anyOf") {
        let rest: Vec<Value> =
            any.iter().filter(|s| s.get("type") != Some(&json!("null"))).cloned().collect();
        if let [only] = rest.as_slice() {
            object.remove("anyOf");
            if let Some(only) = only.as_object() {
                object.extend(only.clone());
            }
        }
    }
}

/// `GET /api/v1/devices/{id}/metrics` → `get_devices_id_metrics`: stable, unique, and a fine
/// method name for generated clients.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "api" && *p != "v1") {
        id.push('_');
        id.extend(
            part.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()),
        );
    }
    id
}

impl JsonSchema for Problem {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let field = g.subschema_for::<fleet_api::FieldProblem>();
        schemars::json_schema!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["status", "title", "detail"],
            "properties": {
                "status": { "type": "integer", "minimum": 400, "maximum": 599 },
                "title": { "type": "string" },
                "detail": { "type": "string", "description": "what was wrong and what to do next" },
                "errors": { "type": "array", "items": field, "description": "every refused field (validation failures)" }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_every_route_is_described() {
        let doc = build();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op["responses"]["200"].is_object() || op["responses"]["201"].is_object());
            for (name, _) in route.params {
                assert!(route.path.contains(&format!("{{{name}}}")), "{} {name}", route.path);
            }
        }
    }

    #[test]
    fn request_bodies_say_what_is_required() {
        let doc = build();
        let group = &doc["components"]["schemas"]["GroupRequest"];
        assert!(group["required"].as_array().unwrap().iter().any(|f| f == "name"), "{group}");
        let devices = doc["paths"]["/api/v1/devices"]["get"]["parameters"].as_array().unwrap();
        let names: Vec<&str> = devices.iter().map(|p| p["name"].as_str().unwrap()).collect();
        for expected in ["selector", "group", "limit", "after"] {
            assert!(names.contains(&expected), "{names:?}");
        }
        let device = &doc["paths"]["/api/v1/devices/{id}"]["get"]["parameters"][0]["schema"];
        assert_eq!(device["$ref"], "#/components/schemas/DeviceId", "{device}");
        assert_eq!(schemas_of(&doc)["DeviceId"]["maxLength"], 64);
    }

    fn schemas_of(doc: &Value) -> &Map<String, Value> {
        doc["components"]["schemas"].as_object().unwrap()
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(
                seen.insert(operation_id(route.method, route.path)),
                "{} {}",
                route.method,
                route.path
            );
        }
    }
}
