//! The admin API's OpenAPI description against the running server: every operation it
//! describes is called, and each answer's status must be one it documents and its body must
//! match the documented schema.

use serde_json::{json, Value};

use crate::common::{ledger_with, Env, TestServer, TOKEN};

const ADMIN: &str = "test-admin-token-0123456789";

/// The schema `schema` points to (one `$ref` level at a time).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// What in `v` does not match `schema` (JSON Schema as utoipa writes it: `$ref`, `allOf`,
/// `oneOf`, `anyOf`, `type` (one or a list), `required`, `properties`, `items`).
fn mismatches(doc: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut out = Vec::new();
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            out.extend(mismatches(doc, s, v, at));
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array) {
            if !any.iter().any(|s| mismatches(doc, s, v, at).is_empty()) {
                out.push(format!("{at}: matches none of {key} {any:?}: {v}"));
            }
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
        out.push(format!("{at}: {v} is not {types:?}"));
        return out;
    }
    if let Some(obj) = v.as_object() {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap_or("");
            if !obj.contains_key(r) {
                out.push(format!("{at}: missing required \"{r}\" in {v}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(props) = props {
            for (k, s) in props {
                if let Some(x) = obj.get(k) {
                    out.extend(mismatches(doc, s, x, &format!("{at}.{k}")));
                }
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            for k in obj.keys().filter(|k| !props.is_some_and(|p| p.contains_key(*k))) {
                out.push(format!("{at}: \"{k}\" is not allowed"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            out.extend(mismatches(doc, items, x, &format!("{at}[{i}]")));
        }
    }
    out
}

/// A request body for the operation, and the key its path's parameter takes.
fn request_for<'a>(path: &str, method: &str, commission: &'a str) -> (String, Option<Value>, &'a str) {
    let kind = path.split('/').nth(2).unwrap_or("");
    let key = match kind {
        "affiliates" => "aff1",
        "groups" => "api-group",
        "coupons" => "SPRING10",
        "links" => "demo",
        "commissions" => commission,
        "payouts" => "op-1",
        _ => "",
    };
    let path = path.replace("{id}", key).replace("{code}", key).replace("{affiliate}", "aff1");
    let body = match (kind, method, path.split('/').count()) {
        ("affiliates", "post", 3) => Some(json!({"id": "oa-new", "name": "New"})),
        ("groups", "post", 3) => Some(json!({"id": "og-new"})),
        ("coupons", "post", 3) => Some(json!({"code": "OC-NEW", "offer": "shoes", "affiliate": "aff1"})),
        ("links", "post", 3) => Some(json!({"code": "ol-new", "offer": "shoes", "affiliate": "aff1"})),
        ("affiliates", "put", _) => Some(json!({"id": key, "name": "Spring Deals Blog"})),
        ("groups", "put", _) => Some(json!({"id": key, "name": "Put"})),
        ("coupons", "put", _) => Some(json!({"code": key, "offer": "shoes", "affiliate": "aff2"})),
        ("links", "put", _) => Some(json!({"code": key, "offer": "shoes", "affiliate": "aff1"})),
        ("affiliates", "post", _) if path.ends_with("/tokens") => Some(json!({"name": "portal"})),
        ("affiliates" | "groups", "patch", _) => Some(json!({"name": "Patched"})),
        ("coupons" | "links", "patch", _) => Some(json!({"active": true})),
        ("import", _, _) => Some(json!({"affiliates": [{"id": "oi-new"}]})),
        ("log-level", "put", _) => Some(json!({"level": "info"})),
        ("erase", _, _) => Some(json!({"ips": ["203.0.113.99"]})),
        ("retention", _, _) => Some(json!({"days": 30})),
        ("bonuses", _, _) => {
            Some(json!({"affiliate": "aff1", "offer": "shoes", "amount": "5.00", "reason": "contest"}))
        }
        ("commissions", "post", _) if path.ends_with("/approve") => Some(json!({"note": "early"})),
        ("commissions", "post", _) if path.ends_with("/reject") => Some(json!({"reason": "test"})),
        ("commissions", "post", _) if path.ends_with("/adjust") => Some(json!({"amount": "1.00", "reason": "test"})),
        ("payouts", "post", 3) => Some(json!({"payout": "op-1", "up_to": "2099-12-31", "note": "first"})),
        ("payouts", "post", _) => Some(json!({"reason": "test"})),
        _ => None,
    };
    (path, body, key)
}

#[test]
fn every_operation_the_description_names_answers_as_it_says() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server: TestServer = env.serve();
    let r = server.admin("GET", "/admin/openapi.json", Some(ADMIN), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(server.admin("GET", "/admin/openapi.json", None, "").status, 401, "behind the token like the rest");
    // A group for the operations on one group.
    let r = server.admin("POST", "/admin/groups", Some(ADMIN), r#"{"id":"api-group"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    // aff2's postbacks go to a closed port: a delivery for the operations on one.
    let body = r#"{"id":"aff2","postback_url":"http://127.0.0.1:9/pb?cid={click_id}"}"#;
    assert_eq!(server.admin("PATCH", "/admin/affiliates/aff2", Some(ADMIN), body).status, 200);
    // A pending commission for the operations on one (adjusted, approved, then rejected:
    // the paths come in that order).
    let r =
        server.get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=OA1&amount=100.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ledger = ledger_with(&env.data(), "OA1");
    let commission = ledger.iter().find(|e| e["txid"] == "OA1").unwrap()["id"].as_str().unwrap().to_owned();
    let mut delivery = String::new();
    crate::common::wait_for("a delivery", || {
        let page = server.admin("GET", "/admin/deliveries", Some(ADMIN), "").json();
        delivery = page["deliveries"][0]["key"].as_str().unwrap_or("").to_owned();
        !delivery.is_empty()
    });

    let mut operations = 0;
    let mut problems = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !ids.insert(op["operationId"].as_str().unwrap_or("").to_owned()) {
                problems.push(format!("{method} {path}: operationId {} is not unique", op["operationId"]));
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                if r["description"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{method} {path}: response {status} has no description"));
                }
            }
            let (mut target, body, _) = request_for(path, method, &commission);
            target = target.replace("{key}", &delivery);
            if target.contains("{token_id}") {
                let r = server.admin("POST", "/admin/affiliates/aff1/tokens", Some(ADMIN), "{}");
                target = target.replace("{token_id}", r.json()["id"].as_str().unwrap());
            }
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let r = server.admin(&method.to_uppercase(), &target, Some(ADMIN), &body);
            operations += 1;
            let documented = &op["responses"][r.status.to_string()];
            if documented.is_null() {
                problems.push(format!("{method} {target}: {} is not documented: {}", r.status, r.text()));
                continue;
            }
            if let Some(schema) = documented["content"]["application/json"].get("schema") {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                for m in mismatches(&doc, schema, &v, &format!("{method} {target}")) {
                    problems.push(m);
                }
            }
            // The operations the description promises succeed with these requests.
            if r.status >= 400 {
                problems.push(format!("{method} {target}: {} {}", r.status, r.text()));
            }
        }
    }
    assert!(operations >= 35, "{operations} operations");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_schema_check_catches_what_does_not_match() {
    let doc = json!({"components": {"schemas": {"A": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}}}});
    let a = json!({"$ref": "#/components/schemas/A"});
    assert!(mismatches(&doc, &a, &json!({"n": 1}), "x").is_empty());
    assert_eq!(mismatches(&doc, &a, &json!({}), "x").len(), 1);
    assert_eq!(mismatches(&doc, &a, &json!({"n": "1"}), "x").len(), 1);
    let list = json!({"type": "array", "items": a});
    assert_eq!(mismatches(&doc, &list, &json!([{"n": 1}, {"m": 2}]), "x").len(), 1);
    let closed = json!({"type": "object", "properties": {"n": {}}, "additionalProperties": false});
    assert_eq!(mismatches(&doc, &closed, &json!({"n": 1, "m": 2}), "x").len(), 1);
    let either = json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/A"}]});
    assert!(mismatches(&doc, &either, &Value::Null, "x").is_empty());
    assert_eq!(mismatches(&doc, &either, &json!(3), "x").len(), 1);
}

#[test]
fn the_affiliate_api_answers_as_its_description_says() {
    let env = Env::new("");
    env.append_config(&format!("[admin]\ntoken = \"{ADMIN}\"\n"));
    let server: TestServer = env.serve();
    let r = server.get("/v1/affiliate/openapi.json");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let r = server.admin("POST", "/admin/affiliates/aff2/tokens", Some(ADMIN), "{}");
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r = server.get(&format!("/postback?offer=shoes&goal=sale&coupon=SPRING10&txid=OA2&amount=10.00&token={TOKEN}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ledger = ledger_with(&env.data(), "OA2");
    let entry = ledger.iter().find(|e| e["txid"] == "OA2").unwrap()["id"].as_str().unwrap().to_owned();
    // A payout that paid aff2 (a bonus, approved at once), for its statement.
    let bonus = r#"{"affiliate":"aff2","offer":"shoes","amount":"7.00","reason":"contest"}"#;
    assert_eq!(server.admin("POST", "/admin/bonuses", Some(ADMIN), bonus).status, 200);
    let r = server.admin("POST", "/admin/payouts", Some(ADMIN), r#"{"payout":"op-2","up_to":"2099-12-31"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut problems = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let target = path.replace("{id}", if path.contains("/payouts/") { "op-2" } else { &entry });
            let r = crate::common::Conn::open(server.addr).send(&format!(
                "{} {target} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n",
                method.to_uppercase()
            ));
            let documented = &op["responses"][r.status.to_string()];
            if documented.is_null() || r.status >= 400 {
                problems.push(format!("{method} {target}: {} {}", r.status, r.text()));
                continue;
            }
            if let Some(schema) = documented["content"]["application/json"].get("schema") {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                problems.extend(mismatches(&doc, schema, &v, &format!("{method} {target}")));
            }
        }
    }
    assert!(operations >= 10, "{operations} operations");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
