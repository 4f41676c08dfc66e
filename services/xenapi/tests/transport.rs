//! End to end through `XenApi::handle`/`poll`: request bytes in, response bytes out, for both
//! codecs, including a blocked call and undecodable bodies.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_xenapi::xmlrpc::decode_response;
use keel_xenapi::{Endpoint, Handled, Response, Timestamp, Value, XenApi};
use serde_json::{json, Value as Json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn ready(h: Handled) -> Response {
    match h {
        Handled::Ready(r) => r,
        Handled::Pending(p) => panic!("unexpectedly pending: {:?}", p.wait()),
    }
}

fn xml(api: &mut XenApi, body: &str) -> Value {
    let r = ready(api.handle(Endpoint::XmlRpc, body.as_bytes(), T0));
    assert_eq!(r.content_type, "text/xml");
    decode_response(&r.body).expect("a methodResponse")
}

fn json_call(api: &mut XenApi, body: Json, now: Timestamp) -> Handled {
    api.handle(Endpoint::JsonRpc, body.to_string().as_bytes(), now)
}

fn json_ready(api: &mut XenApi, body: Json) -> Json {
    let r = ready(json_call(api, body, T0));
    assert_eq!(r.content_type, "application/json");
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn endpoints_map_from_paths() {
    assert_eq!(Endpoint::from_path("/"), Some(Endpoint::XmlRpc));
    assert_eq!(Endpoint::from_path("/RPC2"), Some(Endpoint::XmlRpc));
    assert_eq!(Endpoint::from_path("/jsonrpc"), Some(Endpoint::JsonRpc));
    assert_eq!(Endpoint::from_path("/jsonrpc?x=1"), Some(Endpoint::JsonRpc));
    assert_eq!(Endpoint::from_path("/import_raw_vdi/"), None);
}

#[test]
fn python_sdk_session_over_xml_rpc() {
    let mut api = api();
    let login = xml(&mut api, &fixture("python_login.xml"));
    assert_eq!(field(&login, "Status"), &s("Success"));
    let session = field(&login, "Value").as_str().unwrap().to_string();

    // The SDK's version probe: pool.get_all, pool.get_master, host.get_API_version_*.
    let body = fixture("python_pool_get_all.xml").replace("SESSION", &session);
    let pools = xml(&mut api, &body);
    let pool = field(&pools, "Value").as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_string();
    let master = xml(
        &mut api,
        &keel_xenapi::xmlrpc::encode_call("pool.get_master", &[s(&session), s(&pool)]),
    );
    let host = field(&master, "Value").clone();
    let major = xml(
        &mut api,
        &keel_xenapi::xmlrpc::encode_call("host.get_API_version_major", &[s(&session), host]),
    );
    // 64-bit ints travel as strings over XML-RPC.
    assert_eq!(field(&major, "Value"), &s("2"));

    let body = fixture("python_add_to_other_config.xml")
        .replace("SESSION", &session)
        .replace("POOL", &pool);
    assert_eq!(field(&xml(&mut api, &body), "Status"), &s("Success"));
    let again = xml(&mut api, &body);
    assert_eq!(field(&again, "Status"), &s("Failure"));
    assert_eq!(
        field(&again, "ErrorDescription"),
        &Value::string_array([
            "MAP_DUPLICATE_KEY",
            "pool",
            "other_config",
            pool.as_str(),
            "xo:barrier"
        ])
    );
    let oc = xml(
        &mut api,
        &keel_xenapi::xmlrpc::encode_call("pool.get_other_config", &[s(&session), s(&pool)]),
    );
    assert_eq!(
        field(&oc, "Value"),
        &Value::string_map([("xo:barrier", "v'\"<>&")])
    );
}

#[test]
fn wrong_password_over_xml_rpc_is_a_failure_envelope() {
    let mut api = api();
    let body = fixture("python_login.xml").replace("pa&lt;ss&amp;word", "nope");
    let r = xml(&mut api, &body);
    assert_eq!(field(&r, "Status"), &s("Failure"));
    assert_eq!(
        field(&r, "ErrorDescription").as_array().unwrap()[0],
        s("SESSION_AUTHENTICATION_FAILED")
    );
}

#[test]
fn undecodable_xml_gets_an_unmarshal_failure_envelope() {
    let mut api = api();
    for body in ["", "<methodCall>", "<a/>"] {
        let r = xml(&mut api, body);
        assert_eq!(field(&r, "Status"), &s("Failure"));
        assert_eq!(
            field(&r, "ErrorDescription").as_array().unwrap()[0],
            s("XMLRPC_UNMARSHAL_FAILURE")
        );
    }
}

#[test]
fn xen_orchestra_flow_over_json_rpc_v2() {
    let mut api = api();
    let login = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"session.login_with_password","params":["root", PASSWORD, "2.21", "xen-orchestra"],"id":0}),
    );
    let session = login["result"].as_str().unwrap().to_string();
    let records = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"pool.get_all_records","params":[session],"id":1}),
    );
    let (pool, record) = records["result"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(record["other_config"].is_object());
    let pool = pool.clone();
    let token = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"event.inject","params":[session, "pool", pool],"id":2}),
    );
    let token = token["result"].as_str().unwrap().to_string();

    // event.from blocks; the barrier write wakes it.
    let pending = match json_call(
        &mut api,
        json!({"jsonrpc":"2.0","method":"event.from","params":[session, ["pool"], token, 60.1],"id":3}),
        T0,
    ) {
        Handled::Pending(p) => p,
        Handled::Ready(r) => panic!("must block: {}", String::from_utf8_lossy(&r.body)),
    };
    assert_eq!(pending.wake_at(), Some(T0.plus_ms(60_100)));
    json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"pool.add_to_other_config","params":[session, pool, "xo:1234", "x"],"id":4}),
    );
    let r = ready(api.poll(pending, T0.plus_ms(5)));
    let out: Json = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(out["id"], json!(3));
    assert_eq!(
        out["result"]["events"][0]["snapshot"]["other_config"]["xo:1234"],
        json!("x")
    );
    assert_eq!(out["result"]["valid_ref_counts"]["pool"], json!(1));

    // Errors are v2 objects with the xapi code as the message.
    let err = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"pool.get_all","params":["OpaqueRef:bad"],"id":5}),
    );
    assert_eq!(
        err["error"],
        json!({"code":1,"message":"SESSION_INVALID","data":["OpaqueRef:bad"]})
    );
}

#[test]
fn json_rpc_v1_errors_are_lists() {
    let mut api = api();
    let out = json_ready(&mut api, json!({"method":"nope.nope","params":[],"id":9}));
    assert_eq!(
        out,
        json!({"result": null, "error": ["MESSAGE_METHOD_UNKNOWN", "nope.nope"], "id": 9})
    );
}

#[test]
fn async_task_result_is_xml_text_over_json_rpc() {
    let mut api = api();
    let login = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"session.login_with_password","params":["root", PASSWORD],"id":0}),
    );
    let session = login["result"].as_str().unwrap().to_string();
    let host = api.host_ref().to_string();
    // host.get_servertime is not asyncable; pool.sync_database is.
    let task = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"Async.pool.sync_database","params":[session],"id":1}),
    );
    let task = task["result"].as_str().unwrap().to_string();
    let rec = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"task.get_record","params":[session, task],"id":2}),
    );
    assert_eq!(rec["result"]["status"], json!("success"));
    assert_eq!(rec["result"]["progress"], json!(1.0));
    let t = json_ready(
        &mut api,
        json!({"jsonrpc":"2.0","method":"host.get_servertime","params":[session, host],"id":3}),
    );
    assert_eq!(t["result"], json!(T0.to_xapi_datetime()));
}

#[test]
fn hostile_json_bodies_answer_cleanly() {
    let mut api = api();
    for body in [
        &b"\xff"[..],
        b"{}",
        b"[]",
        b"{\"method\":\"session.login_with_password\",\"params\":[1,2]}",
    ] {
        let r = ready(api.handle(Endpoint::JsonRpc, body, T0));
        let out: Json = serde_json::from_slice(&r.body).unwrap();
        assert!(out["error"] != Json::Null, "{out}");
    }
}
