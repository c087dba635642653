//! The OpenAPI document served at `GET /openapi.json` parses, documents every route the
//! router registers, and has no dangling `$ref`.

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
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
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
