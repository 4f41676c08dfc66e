//! XML-RPC codec: real client requests, round trips, escaping, limits and hostile input.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use keel_xenapi::codec::{DecodeError, MethodCall, MAX_NESTING_DEPTH};
use keel_xenapi::xmlrpc::{
    decode_call, decode_response, encode_call, encode_response, value_to_string,
};
use keel_xenapi::{ApiError, Value};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn python_sdk_login_decodes() {
    let call = decode_call(&fixture("python_login.xml")).unwrap();
    assert_eq!(
        call,
        MethodCall {
            method: "session.login_with_password".into(),
            params: vec![
                Value::str("root"),
                Value::str("pa<ss&word"),
                Value::str("2.21"),
                Value::str("XenAPI Python SDK")
            ],
        }
    );
}

#[test]
fn python_sdk_event_from_decodes_arrays_empty_strings_and_doubles() {
    let call = decode_call(&fixture("python_event_from.xml")).unwrap();
    assert_eq!(call.method, "event.from");
    assert_eq!(
        call.params,
        vec![
            Value::str("SESSION"),
            Value::string_array(["pool", "VM", "task"]),
            Value::str(""),
            Value::Float(60.1),
        ]
    );
}

#[test]
fn python_nested_struct_with_nil_and_bool_decodes() {
    let call = decode_call(&fixture("python_nested_struct.xml")).unwrap();
    let mut inner = BTreeMap::new();
    inner.insert("d".to_string(), Value::Float(2.5));
    let mut top = BTreeMap::new();
    top.insert("a".to_string(), Value::Int(1));
    top.insert(
        "b".to_string(),
        Value::Array(vec![Value::Bool(true), Value::Nil]),
    );
    top.insert("c".to_string(), Value::Struct(inner));
    assert_eq!(call.params, vec![Value::Struct(top)]);
}

#[test]
fn all_scalar_types_decode() {
    let body = "<methodCall><methodName>m</methodName><params>\
        <param><value><i4>-5</i4></value></param>\
        <param><value><int>7</int></value></param>\
        <param><value><i8>9223372036854775807</i8></value></param>\
        <param><value><boolean>0</boolean></value></param>\
        <param><value><double>-1.5</double></value></param>\
        <param><value>untyped text</value></param>\
        <param><value></value></param>\
        <param><value><dateTime.iso8601>20240102T03:04:05Z</dateTime.iso8601></value></param>\
        <param><value><string>a &amp; b &lt;c&gt; &#x263A; <![CDATA[<raw>]]></string></value></param>\
        </params></methodCall>";
    let call = decode_call(body.as_bytes()).unwrap();
    assert_eq!(
        call.params,
        vec![
            Value::Int(-5),
            Value::Int(7),
            Value::Int(i64::MAX),
            Value::Bool(false),
            Value::Float(-1.5),
            Value::str("untyped text"),
            Value::str(""),
            Value::DateTime("20240102T03:04:05Z".into()),
            Value::str("a & b <c> \u{263A} <raw>"),
        ]
    );
}

#[test]
fn no_params_element_means_no_params() {
    let call = decode_call(b"<methodCall><methodName>system.listMethods</methodName></methodCall>")
        .unwrap();
    assert!(call.params.is_empty());
}

fn sample_value() -> Value {
    let mut m = BTreeMap::new();
    m.insert("quote\"s".to_string(), Value::str("it's <&> fine"));
    m.insert("int".to_string(), Value::Int(-42));
    m.insert("big".to_string(), Value::Int(i64::MIN));
    m.insert("flag".to_string(), Value::Bool(true));
    m.insert("f".to_string(), Value::Float(0.25));
    m.insert(
        "when".to_string(),
        Value::DateTime("20240229T12:00:00Z".into()),
    );
    m.insert(
        "list".to_string(),
        Value::Array(vec![Value::Nil, Value::str(""), Value::empty_struct()]),
    );
    m.insert(
        "unicode".to_string(),
        Value::str("h\u{e9}llo \u{1F600}\r\n\t"),
    );
    Value::Struct(m)
}

#[test]
fn call_round_trip_preserves_every_type() {
    let params = vec![sample_value(), Value::Int(1 << 40), Value::str("x")];
    let text = encode_call("VM.do_thing", &params);
    let back = decode_call(text.as_bytes()).unwrap();
    assert_eq!(back.method, "VM.do_thing");
    assert_eq!(back.params, params);
}

#[test]
fn responses_use_the_status_envelope_and_ints_travel_as_strings() {
    let ok = encode_response(&Ok(Value::Int(21)));
    let text = String::from_utf8(ok.clone()).unwrap();
    assert!(
        text.starts_with("<?xml version=\"1.0\"?>\n<methodResponse>"),
        "{text}"
    );
    assert!(text.contains("<value>21</value>"), "{text}");
    let decoded = decode_response(&ok).unwrap();
    let mut expect = BTreeMap::new();
    expect.insert("Status".to_string(), Value::str("Success"));
    expect.insert("Value".to_string(), Value::str("21"));
    assert_eq!(decoded, Value::Struct(expect));

    let err = encode_response(&Err(ApiError::SessionInvalid {
        reference: "OpaqueRef:x".into(),
    }));
    let decoded = decode_response(&err).unwrap();
    let mut expect = BTreeMap::new();
    expect.insert("Status".to_string(), Value::str("Failure"));
    expect.insert(
        "ErrorDescription".to_string(),
        Value::string_array(["SESSION_INVALID", "OpaqueRef:x"]),
    );
    assert_eq!(decoded, Value::Struct(expect));
}

#[test]
fn response_round_trip_keeps_strings_exactly() {
    let body = encode_response(&Ok(sample_value()));
    let decoded = decode_response(&body).unwrap();
    let value = decoded.as_struct().unwrap().get("Value").unwrap().clone();
    // Ints come back as their decimal strings (xapi's convention); everything else exactly.
    let mut expect = sample_value();
    if let Value::Struct(m) = &mut expect {
        m.insert("int".into(), Value::str("-42"));
        m.insert("big".into(), Value::str("-9223372036854775808"));
    }
    assert_eq!(value, expect);
}

#[test]
fn escaping_covers_all_five_characters_and_strips_illegal_controls() {
    let body = encode_response(&Ok(Value::str("& < > \" ' \u{1}")));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("&amp; &lt; &gt; &quot; &apos; \u{FFFD}"),
        "{text}"
    );
    // Struct member names are escaped too.
    let mut m = BTreeMap::new();
    m.insert("<k>".to_string(), Value::Nil);
    let text = String::from_utf8(encode_response(&Ok(Value::Struct(m)))).unwrap();
    assert!(text.contains("<name>&lt;k&gt;</name>"), "{text}");
}

#[test]
fn task_result_text_is_a_value_element() {
    assert_eq!(
        value_to_string(&Value::str("OpaqueRef:abc")),
        "<value>OpaqueRef:abc</value>"
    );
    assert_eq!(
        value_to_string(&Value::Bool(true)),
        "<value><boolean>1</boolean></value>"
    );
}

#[test]
fn non_finite_doubles_are_written_parseably() {
    let text = String::from_utf8(encode_response(&Ok(Value::Float(f64::NAN)))).unwrap();
    assert!(text.contains("<double>0.0</double>"), "{text}");
    let text = String::from_utf8(encode_response(&Ok(Value::Float(1e300)))).unwrap();
    assert!(text.contains("<double>1000000000"), "no exponent: {text}");
}

fn nested(depth: usize) -> String {
    let mut body = String::from("<methodCall><methodName>m</methodName><params><param>");
    for _ in 0..depth {
        body.push_str("<value><array><data>");
    }
    body.push_str("<value>x</value>");
    for _ in 0..depth {
        body.push_str("</data></array></value>");
    }
    body.push_str("</param></params></methodCall>");
    body
}

#[test]
fn nesting_limit_is_enforced() {
    assert!(decode_call(nested(MAX_NESTING_DEPTH).as_bytes()).is_ok());
    assert_eq!(
        decode_call(nested(MAX_NESTING_DEPTH + 2).as_bytes()),
        Err(DecodeError::TooDeep)
    );
    // Far deeper than any stack could recurse: must still be a clean error.
    assert!(decode_call(nested(50_000).as_bytes()).is_err());
}

#[test]
fn node_limit_is_enforced() {
    let mut body =
        String::from("<methodCall><methodName>m</methodName><params><param><value><array><data>");
    for _ in 0..120_000 {
        body.push_str("<value>1</value>");
    }
    body.push_str("</data></array></value></param></params></methodCall>");
    assert_eq!(decode_call(body.as_bytes()), Err(DecodeError::TooManyNodes));
}

#[test]
fn hostile_and_malformed_bodies_are_clean_errors() {
    let cases: &[&[u8]] = &[
        b"",
        b"not xml",
        b"<methodCall>",
        b"<methodCall><methodName>m</methodName><params><param></param></params></methodCall>",
        b"<other/>",
        b"<methodCall><params/></methodCall>",
        b"<methodCall><methodName></methodName></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><bogus/></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><i4>1</i4><i4>2</i4></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><struct><member><name>a</name></member></struct></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><boolean>2</boolean></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><double>abc</double></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><array></array></value></param></params></methodCall>",
        // Entity expansion via a DTD (billion laughs) is refused outright.
        b"<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><methodCall><methodName>&b;</methodName></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value>&undefined;</value></param></params></methodCall>",
        b"\xff\xfe<methodCall/>",
        b"<methodCall><methodName>\xc3\x28</methodName></methodCall>",
    ];
    for body in cases {
        let result = decode_call(body);
        assert!(
            result.is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(body)
        );
        // Every failure renders as xapi's unmarshal failure.
        let e = result.unwrap_err().to_api_error();
        assert_eq!(e.code(), "XMLRPC_UNMARSHAL_FAILURE");
    }
    assert_eq!(decode_call(b"\xff"), Err(DecodeError::InvalidUtf8));
}

#[test]
fn huge_integers_are_rejected_not_wrapped() {
    for text in [
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999999",
        "1e3",
        "0x10",
        "",
    ] {
        let body = format!(
            "<methodCall><methodName>m</methodName><params><param><value><i8>{text}</i8></value></param></params></methodCall>"
        );
        assert!(
            matches!(decode_call(body.as_bytes()), Err(DecodeError::BadInt(_))),
            "accepted {text}"
        );
    }
}

#[test]
fn long_method_names_are_refused() {
    let body = format!(
        "<methodCall><methodName>{}</methodName></methodCall>",
        "a".repeat(300)
    );
    assert!(decode_call(body.as_bytes()).is_err());
}
