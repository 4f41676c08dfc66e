//! JSON-RPC codec: both dialects, round trips, errors, limits and hostile input.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use keel_xenapi::codec::DecodeError;
use keel_xenapi::jsonrpc::{
    decode_call, encode_call, encode_decode_failure, encode_response, JsonReplyTo, JsonRpcVersion,
};
use keel_xenapi::{ApiError, Value};
use serde_json::{json, Value as Json};

fn parse(bytes: &[u8]) -> Json {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn xen_orchestra_v2_request_decodes() {
    // What Xen Orchestra's json-rpc-protocol `format.request(0, method, args)` sends.
    let body = br#"{"jsonrpc":"2.0","method":"event.from","params":["OpaqueRef:s",["pool","VM"],"",60.1],"id":0}"#;
    let (call, reply_to) = decode_call(body).unwrap();
    assert_eq!(call.method, "event.from");
    assert_eq!(
        call.params,
        vec![
            Value::str("OpaqueRef:s"),
            Value::string_array(["pool", "VM"]),
            Value::str(""),
            Value::Float(60.1)
        ]
    );
    assert_eq!(
        reply_to,
        JsonReplyTo {
            version: JsonRpcVersion::V2,
            id: json!(0)
        }
    );
}

#[test]
fn v1_request_decodes_and_missing_params_mean_none() {
    let (call, reply_to) = decode_call(br#"{"method":"system.listMethods","id":"abc"}"#).unwrap();
    assert!(call.params.is_empty());
    assert_eq!(reply_to.version, JsonRpcVersion::V1);
    assert_eq!(reply_to.id, json!("abc"));
}

#[test]
fn v1_and_v2_responses_have_the_documented_shapes() {
    let v1 = JsonReplyTo {
        version: JsonRpcVersion::V1,
        id: json!(7),
    };
    let v2 = JsonReplyTo {
        version: JsonRpcVersion::V2,
        id: json!(7),
    };
    assert_eq!(
        parse(&encode_response(&v1, &Ok(Value::Int(2)))),
        json!({"result": 2, "error": null, "id": 7})
    );
    let err = Err(ApiError::SessionInvalid {
        reference: "OpaqueRef:x".into(),
    });
    assert_eq!(
        parse(&encode_response(&v1, &err)),
        json!({"result": null, "error": ["SESSION_INVALID", "OpaqueRef:x"], "id": 7})
    );
    assert_eq!(
        parse(&encode_response(&v2, &Ok(Value::str("OpaqueRef:a")))),
        json!({"jsonrpc": "2.0", "result": "OpaqueRef:a", "id": 7})
    );
    assert_eq!(
        parse(&encode_response(&v2, &err)),
        json!({"jsonrpc": "2.0", "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:x"]}, "id": 7})
    );
}

#[test]
fn results_are_bare_values_without_envelope() {
    let v2 = JsonReplyTo {
        version: JsonRpcVersion::V2,
        id: Json::Null,
    };
    let mut m = BTreeMap::new();
    m.insert(
        "k".to_string(),
        Value::DateTime("20240101T00:00:00Z".into()),
    );
    m.insert("f".to_string(), Value::Float(f64::INFINITY));
    let out = parse(&encode_response(&v2, &Ok(Value::Struct(m))));
    assert_eq!(out["result"], json!({"k": "20240101T00:00:00Z", "f": null}));
    assert!(out.get("Status").is_none());
}

#[test]
fn call_round_trip() {
    let mut m = BTreeMap::new();
    m.insert(
        "nested".to_string(),
        Value::Array(vec![Value::Bool(false), Value::Nil, Value::Int(-3)]),
    );
    m.insert(
        "text".to_string(),
        Value::str("quote \" backslash \\ \u{1F600}"),
    );
    let params = vec![Value::Struct(m), Value::Int(i64::MAX), Value::Float(0.5)];
    for version in [JsonRpcVersion::V1, JsonRpcVersion::V2] {
        let body = encode_call(version, json!(1), "VM.x", &params);
        let (call, reply_to) = decode_call(&body).unwrap();
        assert_eq!(call.params, params);
        assert_eq!(reply_to.version, version);
    }
}

#[test]
fn huge_numbers_are_errors_or_floats_never_wrapped_ints() {
    // Above i64 but within u64: refused rather than silently wrapped.
    assert!(matches!(
        decode_call(br#"{"method":"m","params":[18446744073709551615]}"#).map_err(|f| f.error),
        Err(DecodeError::BadInt(_))
    ));
    // Beyond u64: serde_json gives an f64, which int parameters then refuse.
    let (call, _) =
        decode_call(br#"{"method":"m","params":[123456789012345678901234567890]}"#).unwrap();
    assert!(matches!(call.params[0], Value::Float(_)));
    assert_eq!(call.params[0].as_int(), None);
    // Out of f64 range: a clean syntax error.
    assert!(decode_call(br#"{"method":"m","params":[1e999]}"#).is_err());
}

#[test]
fn malformed_and_hostile_bodies_get_jsonrpc_errors() {
    let cases: &[(&[u8], i64)] = &[
        (b"", -32700),
        (b"{", -32700),
        (b"\xff\xfe", -32700),
        (b"[1,2]", -32600),
        (b"\"just a string\"", -32600),
        (br#"{"params":[]}"#, -32600),
        (br#"{"method":5}"#, -32600),
        (br#"{"method":"m","params":{"a":1}}"#, -32600),
        (br#"{"method":""}"#, -32600),
    ];
    for (body, code) in cases {
        let failure = decode_call(body).expect_err("must fail");
        let out = parse(&encode_decode_failure(&failure));
        assert_eq!(
            out["error"]["code"],
            json!(code),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(out["jsonrpc"], json!("2.0"));
    }
}

#[test]
fn the_request_id_is_echoed_even_on_decode_failure() {
    let failure =
        decode_call(br#"{"jsonrpc":"2.0","id":42,"method":"m","params":"nope"}"#).unwrap_err();
    assert_eq!(parse(&encode_decode_failure(&failure))["id"], json!(42));
}

#[test]
fn deep_nesting_is_refused() {
    let deep = |n: usize| {
        format!(
            r#"{{"method":"m","params":[{}1{}]}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    assert!(decode_call(deep(60).as_bytes()).is_ok());
    assert_eq!(
        decode_call(deep(100).as_bytes()).unwrap_err().error,
        DecodeError::TooDeep
    );
    // Beyond serde_json's own recursion limit: still an error, not a stack overflow.
    assert!(decode_call(deep(100_000).as_bytes()).is_err());
}
