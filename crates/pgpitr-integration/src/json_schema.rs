//! The JSON schemas of docs/json.md and a validator for the small subset they use: `type`
//! (a name or a list of names, `"null"` among them for nullable), `properties`, `required`,
//! `additionalProperties` (false: no other keys), `items`, `enum`, `format: "date-time"`
//! (RFC 3339 with an offset), `minimum`. Anything else in a schema is an error, so a schema
//! cannot silently check less than it seems to.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// docs/json.md in the checkout.
pub fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/json.md")
}

/// Every `<!-- schema: NAME -->` marker followed by a fenced json block, by name.
pub fn schemas() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(doc_path()).expect("docs/json.md");
    parse_doc(&text).unwrap_or_else(|e| panic!("docs/json.md: {e}"))
}

pub fn parse_doc(text: &str) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- schema:") else {
            continue;
        };
        let name = rest.trim_end_matches("-->").trim().to_string();
        let open = lines
            .by_ref()
            .map(|(_, l)| l)
            .find(|l| !l.trim().is_empty())
            .ok_or(format!("line {}: schema {name} has no block", n + 1))?;
        if open.trim() != "```json" {
            return Err(format!(
                "line {}: schema {name} must be followed by a ```json block",
                n + 1
            ));
        }
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| l.trim() != "```")
            .collect();
        let v: Value =
            serde_json::from_str(&body.join("\n")).map_err(|e| format!("schema {name}: {e}"))?;
        check_schema(&v, &name)?;
        if out.insert(name.clone(), v).is_some() {
            return Err(format!("schema {name} appears twice"));
        }
    }
    Ok(out)
}

const KEYWORDS: [&str; 9] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "format",
    "minimum",
    "description",
];

/// The schema uses only the subset this validator understands.
fn check_schema(s: &Value, at: &str) -> Result<(), String> {
    let o = s
        .as_object()
        .ok_or(format!("{at}: a schema is an object"))?;
    for k in o.keys() {
        if !KEYWORDS.contains(&k.as_str()) {
            return Err(format!("{at}: unsupported keyword {k:?}"));
        }
    }
    if let Some(f) = o.get("format") {
        if f != "date-time" {
            return Err(format!("{at}: only format date-time is supported"));
        }
    }
    if let Some(p) = o.get("properties") {
        for (k, v) in p.as_object().ok_or(format!("{at}: properties"))? {
            check_schema(v, &format!("{at}.{k}"))?;
        }
    }
    if let Some(i) = o.get("items") {
        check_schema(i, &format!("{at}[]"))?;
    }
    Ok(())
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Every place `v` breaks `schema`, as `path: why` (empty: valid).
pub fn validate(schema: &Value, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    walk(schema, v, "$", &mut errs);
    errs
}

fn walk(s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| type_ok(t, v)) {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::from(e.clone())
            ));
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{at}: {n} is below {min}"));
        }
    }
    if s.get("format").is_some() {
        if let Some(t) = v.as_str() {
            if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                errs.push(format!("{at}: {t:?} is not an RFC 3339 time"));
            }
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(k) {
                    errs.push(format!("{at}: missing required {k:?}"));
                }
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => walk(ps, x, &format!("{at}.{k}"), errs),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: undocumented key {k:?}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            walk(items, x, &format!("{at}[{i}]"), errs);
        }
    }
}

/// Parses `stdout` as one JSON document and validates it against schema `name`; panics
/// with every violation.
#[track_caller]
pub fn assert_valid(schemas: &BTreeMap<String, Value>, name: &str, stdout: &str) -> Value {
    let schema = schemas
        .get(name)
        .unwrap_or_else(|| panic!("docs/json.md has no schema {name:?}"));
    let v: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{name}: stdout is not one JSON document ({e}):\n{stdout}"));
    let errs = validate(schema, &v);
    assert!(
        errs.is_empty(),
        "{name}: output does not follow docs/json.md:\n  {}\n{v:#}",
        errs.join("\n  ")
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_validator_finds_each_kind_of_violation() {
        let s = json!({
            "type": "object",
            "required": ["n", "at"],
            "additionalProperties": false,
            "properties": {
                "n": {"type": "integer", "minimum": 0},
                "at": {"type": "string", "format": "date-time"},
                "maybe": {"type": ["string", "null"]},
                "kind": {"enum": ["a", "b"]},
                "list": {"type": "array", "items": {"type": "number"}}
            }
        });
        let good = json!({"n": 3, "at": "2026-11-22T13:28:21.857553Z", "maybe": null,
                          "kind": "a", "list": [1, 2.5]});
        assert_eq!(validate(&s, &good), Vec::<String>::new());
        for (bad, why) in [
            (
                json!({"at": "2026-11-22T13:28:21Z"}),
                "missing required \"n\"",
            ),
            (
                json!({"n": "3", "at": "2026-11-22T13:28:21Z"}),
                "not of type",
            ),
            (
                json!({"n": 1.5, "at": "2026-11-22T13:28:21Z"}),
                "not of type",
            ),
            (json!({"n": -1, "at": "2026-11-22T13:28:21Z"}), "below"),
            (json!({"n": 1, "at": 1763818101.5}), "not of type"),
            (
                json!({"n": 1, "at": "2026-11-22 13:28:21"}),
                "not an RFC 3339",
            ),
            (
                json!({"n": 1, "at": "2026-11-22T13:28:21Z", "kind": "c"}),
                "not one of",
            ),
            (
                json!({"n": 1, "at": "2026-11-22T13:28:21Z", "list": ["1"]}),
                "$.list[0]",
            ),
            (
                json!({"n": 1, "at": "2026-11-22T13:28:21Z", "x": 1}),
                "undocumented key",
            ),
        ] {
            let e = validate(&s, &bad).join("; ");
            assert!(e.contains(why), "{bad}: {e:?} should say {why}");
        }
    }

    #[test]
    fn the_doc_parser_refuses_what_it_cannot_check() {
        let doc = "x\n<!-- schema: a -->\n```json\n{\"type\": \"object\"}\n```\n";
        assert_eq!(parse_doc(doc).unwrap().len(), 1);
        let bad = "<!-- schema: a -->\n```json\n{\"oneOf\": []}\n```\n";
        assert!(parse_doc(bad).unwrap_err().contains("unsupported keyword"));
        let twice = format!("{doc}{doc}");
        assert!(parse_doc(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn docs_json_md_parses() {
        assert!(!schemas().is_empty());
    }
}
