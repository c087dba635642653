//! The OpenAPI document served at `GET /openapi.json` parses, documents every route the
//! router registers, has no dangling `$ref`, makes auth an optional bearer scheme (never a
//! required header parameter), documents the errors each `/v1` route can give with their
//! codes, and carries the naming rules. `scripts/test-openapi` checks the served document
//! against a running server with schemathesis.

use serde_json::Value;

/// Every (path, method) registered in `src/routes/mod.rs`.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/namespaces", "get"),
    ("/v1/namespaces/{ns}", "put"),
    ("/v1/namespaces/{ns}", "get"),
    ("/v1/namespaces/{ns}", "delete"),
    ("/v1/namespaces/{ns}/stats", "get"),
    ("/v1/aliases/{alias}", "put"),
    ("/v1/aliases/{alias}", "get"),
    ("/v1/namespaces/{ns}/entities", "post"),
    ("/v1/namespaces/{ns}/entities/{key}", "get"),
    ("/v1/namespaces/{ns}/entities/{key}", "delete"),
    ("/v1/namespaces/{ns}/lookup", "post"),
    ("/v1/categories", "get"),
    ("/v1/categories/{category}", "put"),
    ("/v1/categories/{category}/items", "get"),
    ("/v1/categories/{category}/items/{id}", "get"),
    ("/v1/categories/{category}/feedback", "post"),
    ("/v1/categories/{category}/refresh", "post"),
    ("/v1/events", "get"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/ui", "get"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(include_str!("../src/openapi.json")).expect("openapi.json is valid JSON")
}

/// Every `$ref` string in `value`, depth first.
fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if key == "$ref" {
                    out.push(item.as_str().expect("$ref is a string"));
                } else {
                    collect_refs(item, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_covers_the_router_and_resolves() {
    let doc = document();

    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3."), "openapi version {version:?}");

    let paths = doc["paths"].as_object().expect("paths is an object");
    for (path, method) in ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("path {path} is not documented"));
        let operation = item
            .get(*method)
            .unwrap_or_else(|| panic!("{} {path} is not documented", method.to_uppercase()));
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{} {path} has no responses", method.to_uppercase()));
        assert!(!responses.is_empty(), "{method} {path} has no responses");
    }
    // Nothing documented that the router does not serve.
    for (path, item) in paths {
        let item = item.as_object().expect("path item is an object");
        for method in item.keys().filter(|m| METHODS.contains(&m.as_str())) {
            assert!(
                ROUTES.contains(&(path.as_str(), method.as_str())),
                "{} {path} is documented but not routed",
                method.to_uppercase()
            );
        }
    }

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty(), "the document uses components");
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("$ref {reference:?} is not local"));
        assert!(
            pointer.starts_with("/components/"),
            "$ref {reference:?} does not point into components"
        );
        assert!(
            doc.pointer(pointer).is_some(),
            "$ref {reference:?} points at nothing"
        );
    }
}

/// Every error code `ApiError` (crates/larder-server/src/error.rs) can answer with.
const ERROR_CODES: &[&str] = &[
    "bad_request",
    "not_found",
    "unknown_field",
    "dimension_mismatch",
    "non_finite",
    "too_large",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "unavailable",
    "internal",
];

/// Follows `$ref`s (local ones only) to the object they name.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("local $ref");
        value = doc.pointer(pointer).expect("$ref resolves");
    }
    value
}

fn operations(doc: &Value) -> Vec<(String, String, &Value, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), item, operation));
            }
        }
    }
    out
}

/// The error codes a response's JSON body may carry.
fn response_codes(doc: &Value, response: &Value) -> Vec<String> {
    let response = resolve(doc, response);
    let schema = resolve(doc, &response["content"]["application/json"]["schema"]);
    let code = resolve(doc, &schema["properties"]["error"]["properties"]["code"]);
    code["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("error response without a code enum: {response}"))
        .iter()
        .map(|c| c.as_str().expect("code is a string").to_owned())
        .collect()
}

#[test]
fn auth_is_an_optional_bearer_scheme_not_a_header_parameter() {
    let doc = document();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    // Auth is optional: a server with no tokens configured takes requests without one.
    let security = doc["security"].as_array().expect("top-level security");
    assert!(
        security.iter().any(|s| s.get("bearer").is_some()),
        "{security:?}"
    );
    assert!(
        security
            .iter()
            .any(|s| s.as_object().is_some_and(|o| o.is_empty())),
        "no anonymous alternative in {security:?}"
    );
    for (path, method, item, operation) in operations(&doc) {
        let parameters = item["parameters"]
            .as_array()
            .into_iter()
            .chain(operation["parameters"].as_array())
            .flatten();
        for parameter in parameters {
            let parameter = resolve(&doc, parameter);
            assert!(
                !(parameter["in"] == "header"
                    && parameter["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))),
                "{method} {path} declares an Authorization header parameter"
            );
        }
        if !path.starts_with("/v1/") {
            assert_eq!(
                operation["security"],
                serde_json::json!([]),
                "{method} {path} is outside /v1 and needs no token"
            );
        }
    }
}

#[test]
fn every_v1_route_documents_its_errors_with_their_codes() {
    let doc = document();
    let all = response_codes(
        &doc,
        &serde_json::json!({"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}),
    );
    for code in ERROR_CODES {
        assert!(all.iter().any(|c| c == code), "ErrorCode lacks {code}");
    }
    fn expected(status: &str) -> &'static [&'static str] {
        match status {
            "400" => &[
                "bad_request",
                "unknown_field",
                "dimension_mismatch",
                "non_finite",
            ],
            "401" => &["unauthorized"],
            "403" => &["forbidden"],
            "404" => &["not_found"],
            "409" => &["bad_request"],
            "413" => &["too_large"],
            "429" => &["rate_limited"],
            "500" => &["internal"],
            "503" => &["unavailable"],
            other => panic!("undocumented error status {other}"),
        }
    }
    for (path, method, _, operation) in operations(&doc) {
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response_codes(&doc, response),
                    expected(status),
                    "{method} {path} {status}"
                );
            }
        }
        if !path.starts_with("/v1/") {
            continue;
        }
        let mut needed = vec!["401", "403", "500", "503"];
        let has_path_params = path.contains('{');
        let has_query = operation["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| resolve(&doc, p)["in"] == "query"));
        let has_body = operation.get("requestBody").is_some();
        if has_path_params || has_query || has_body {
            needed.push("400");
        }
        if has_path_params {
            // Unknown names, and an empty segment that matches no route.
            needed.push("404");
        }
        if has_body {
            needed.push("413");
        }
        for status in needed {
            assert!(
                responses.contains_key(status),
                "{method} {path} does not document {status}"
            );
        }
    }
    // Registering a category is guarded: categories.max (413) and the per-client rate (429);
    // reads of an unknown category may be refused (404).
    for (path, method) in [
        ("/v1/categories/{category}", "put"),
        ("/v1/categories/{category}/items", "get"),
        ("/v1/categories/{category}/refresh", "post"),
    ] {
        let responses = &doc["paths"][path][method]["responses"];
        for status in ["404", "413", "429"] {
            assert!(
                responses.get(status).is_some(),
                "{method} {path} does not document {status}"
            );
        }
    }
}

#[test]
fn names_and_bounds_follow_the_server_rules() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Name"]["pattern"], "^[a-z0-9][a-z0-9_-]{0,63}$");
    assert_eq!(
        schemas["NamespaceName"]["pattern"],
        "^[a-z0-9][a-z0-9_-]{0,63}(@[a-z0-9][a-z0-9_-]{0,31})?$"
    );
    assert_eq!(schemas["Key"]["minLength"], 1);
    assert_eq!(schemas["Key"]["maxLength"], 512);
    assert_eq!(schemas["CategoryName"]["minLength"], 1);
    assert_eq!(schemas["CategoryName"]["maxLength"], 100);
    assert_eq!(
        schemas["Dtype"]["enum"],
        serde_json::json!(["f32", "f16", "bf16", "i8"])
    );
    let dim = &schemas["FieldSpec"]["properties"]["dim"];
    assert_eq!(
        (dim["minimum"].as_u64(), dim["maximum"].as_u64()),
        (Some(1), Some(65_536))
    );

    let items = &doc["paths"]["/v1/categories/{category}/items"]["get"]["parameters"];
    let query = |name: &str| {
        items
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} parameter"))["schema"]
            .clone()
    };
    assert_eq!(query("limit")["minimum"], 1);
    assert_eq!(query("limit")["maximum"], 100);
    assert_eq!(query("wait_ms")["minimum"], 0);
    assert_eq!(query("wait_ms")["maximum"], 30_000);

    // The server takes null for the optional RegisterRequest fields.
    let register = &schemas["CategoryRegister"]["properties"];
    for field in ["locale", "description"] {
        assert_eq!(register[field]["nullable"], true, "{field} is nullable");
    }
}
