//! XenAPI semantics through the transport-free API: sessions, errors, the generated
//! messages, records, setters, maps, events and tasks.

// Test helpers outside #[test] functions unwrap too: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keel_xenapi::classes;
use keel_xenapi::dispatch::{Args, CallContext, CallOutcome, Job, JobStep, Outcome};
use keel_xenapi::schema::{inverse, msg, param, ro, rw, ClassDecl, FieldType, OBJECTS};
use keel_xenapi::{ApiError, Config, Limits, LoginPolicy, Timestamp, Value, Wait, XenApi};

// ---------------------------------------------------------------------------------------
// sessions

#[test]
fn login_returns_an_opaque_ref_session() {
    let mut api = api();
    let session = login(&mut api);
    assert!(session.starts_with("OpaqueRef:") && session.len() == "OpaqueRef:".len() + 36);
    let host = call(
        &mut api,
        "session.get_this_host",
        vec![s(&session), s(&session)],
    )
    .unwrap();
    assert_eq!(host, s(api.host_ref()));
    let user = call(
        &mut api,
        "session.get_this_user",
        vec![s(&session), s(&session)],
    )
    .unwrap();
    assert_eq!(user, s("OpaqueRef:NULL"));
}

#[test]
fn login_accepts_two_to_four_arguments() {
    let mut api = api();
    assert!(call(
        &mut api,
        "session.login_with_password",
        vec![s("root"), s(PASSWORD)]
    )
    .is_ok());
    assert!(call(
        &mut api,
        "session.login_with_password",
        vec![s("root"), s(PASSWORD), s("1.0")]
    )
    .is_ok());
    assert_eq!(
        call(&mut api, "session.login_with_password", vec![s("root")]),
        Err(ApiError::MessageParameterCountMismatch {
            method: "session.login_with_password".into(),
            expected: 4,
            received: 1
        })
    );
}

#[test]
fn wrong_password_or_user_fails_authentication() {
    let mut api = api();
    for (user, pw) in [("root", "wrong"), ("admin", PASSWORD), ("root", "")] {
        let err = call(
            &mut api,
            "session.login_with_password",
            vec![s(user), s(pw), s("1"), s(user)],
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApiError::SessionAuthenticationFailed { user: user.into() }
        );
        assert_eq!(err.description()[0], "SESSION_AUTHENTICATION_FAILED");
    }
}

#[test]
fn without_a_configured_password_every_login_fails() {
    let mut config = config();
    config.root_password_phc = None;
    let mut api = api_with(config);
    for pw in [PASSWORD, "", "root"] {
        let err = call(
            &mut api,
            "session.login_with_password",
            vec![s("root"), s(pw), s("1"), s("t")],
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApiError::SessionAuthenticationFailed {
                user: "root".into()
            }
        );
    }
}

#[test]
fn failed_logins_are_delayed_and_a_correct_password_is_never_refused() {
    let mut cfg = config();
    cfg.login_policy = LoginPolicy {
        free_failures: 2,
        base_delay_ms: 1_000,
        max_delay_ms: 8_000,
        ..LoginPolicy::default()
    };
    let mut api = api_with(cfg);
    let attempt = |api: &mut XenApi, pw: &str, originator: &str, at: Timestamp| {
        let outcome = call_at(
            api,
            "session.login_with_password",
            vec![s("root"), s(pw), s("1"), s(originator)],
            at,
        );
        (outcome, api.take_reply_hold())
    };
    // The free allowance: answered at once.
    for _ in 0..2 {
        let (outcome, hold) = attempt(&mut api, "bad", "xo", T0);
        assert!(matches!(
            outcome,
            Err(ApiError::SessionAuthenticationFailed { .. })
        ));
        assert_eq!(hold, None);
    }
    // Then each failure is answered after a delay that doubles, with the same error code.
    let (outcome, hold) = attempt(&mut api, "bad", "xo", T0.plus_ms(10));
    match outcome {
        Err(e @ ApiError::LoginThrottled { .. }) => {
            assert_eq!(e.code(), "SESSION_AUTHENTICATION_FAILED");
            assert!(e.params()[1].contains("1000 ms"), "{:?}", e.params());
        }
        other => panic!("expected a delayed failure, got {other:?}"),
    }
    assert_eq!(hold, Some(T0.plus_ms(1_010)));
    let (_, hold) = attempt(&mut api, "bad", "xo", T0.plus_ms(20));
    assert_eq!(hold, Some(T0.plus_ms(2_020)));
    // The right password from the same originator, at once: verified, accepted, not held.
    let (outcome, hold) = attempt(&mut api, PASSWORD, "xo", T0.plus_ms(30));
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(hold, None);
    // Success cleared that originator's count.
    let (outcome, hold) = attempt(&mut api, "bad", "xo", T0.plus_ms(40));
    assert!(matches!(
        outcome,
        Err(ApiError::SessionAuthenticationFailed { .. })
    ));
    assert_eq!(hold, None);
}

#[test]
fn calls_need_a_valid_session() {
    let mut api = api();
    assert_eq!(
        call(&mut api, "pool.get_all", vec![s("OpaqueRef:forged")]),
        Err(ApiError::SessionInvalid {
            reference: "OpaqueRef:forged".into()
        })
    );
    // A ref of another class is not a session either.
    let pool = api.pool_ref().to_string();
    assert!(matches!(
        call(&mut api, "pool.get_all", vec![s(&pool)]),
        Err(ApiError::SessionInvalid { .. })
    ));
    assert!(matches!(
        call(&mut api, "pool.get_all", vec![Value::Int(3)]),
        Err(ApiError::SessionInvalid { .. })
    ));
}

#[test]
fn logout_invalidates_the_session() {
    let mut api = api();
    let session = login(&mut api);
    assert!(call(&mut api, "pool.get_all", vec![s(&session)]).is_ok());
    assert_eq!(
        call(&mut api, "session.logout", vec![s(&session)]),
        Ok(Value::str(""))
    );
    assert_eq!(
        call(&mut api, "pool.get_all", vec![s(&session)]),
        Err(ApiError::SessionInvalid {
            reference: session.clone()
        })
    );
}

#[test]
fn session_table_is_bounded_by_evicting_the_least_recently_active() {
    let mut cfg = config();
    cfg.limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let mut api = api_with(cfg);
    let first = login(&mut api);
    let second = call_at(
        &mut api,
        "session.login_with_password",
        vec![s("root"), s(PASSWORD)],
        T0.plus_ms(1_000),
    )
    .unwrap();
    // Using the first session makes the second the least recently active.
    call_at(&mut api, "pool.get_all", vec![s(&first)], T0.plus_ms(2_000)).unwrap();
    call_at(
        &mut api,
        "session.login_with_password",
        vec![s("root"), s(PASSWORD)],
        T0.plus_ms(3_000),
    )
    .unwrap();
    assert!(call(&mut api, "pool.get_all", vec![s(&first)]).is_ok());
    assert!(matches!(
        call(&mut api, "pool.get_all", vec![second]),
        Err(ApiError::SessionInvalid { .. })
    ));
}

#[test]
fn sessions_cannot_be_listed_or_watched() {
    let mut api = api();
    let session = login(&mut api);
    for method in ["session.get_all", "session.get_all_records"] {
        assert!(matches!(
            call(&mut api, method, vec![s(&session)]),
            Err(ApiError::MessageMethodUnknown { .. })
        ));
    }
    let from = call(
        &mut api,
        "event.from",
        vec![
            s(&session),
            Value::string_array(["*"]),
            s(""),
            Value::Float(0.0),
        ],
    )
    .unwrap();
    let events = field(&from, "events").as_array().unwrap();
    assert!(events.iter().all(|e| field(e, "class") != &s("session")));
    assert!(field(&from, "valid_ref_counts")
        .as_struct()
        .unwrap()
        .get("session")
        .is_none());
}

// ---------------------------------------------------------------------------------------
// dispatch errors and listMethods

#[test]
fn unknown_methods_are_reported_with_their_name() {
    let mut api = api();
    let session = login(&mut api);
    for method in [
        "nope",
        "VGPU.get_all",
        "pool.frobnicate",
        "Async.pool.get_all",
        "Async.session.logout",
        "pool.",
        ".get_all",
        "event.get_record",
    ] {
        assert_eq!(
            call(&mut api, method, vec![s(&session)]),
            Err(ApiError::MessageMethodUnknown {
                method: method.into()
            }),
            "{method}"
        );
    }
    // Read-only fields have no setter.
    let host = api.host_ref().to_string();
    assert!(matches!(
        call(
            &mut api,
            "host.set_API_version_major",
            vec![s(&session), s(&host), Value::Int(3)]
        ),
        Err(ApiError::MessageMethodUnknown { .. })
    ));
}

#[test]
fn parameter_count_includes_the_session() {
    let mut api = api();
    let session = login(&mut api);
    assert_eq!(
        call(&mut api, "pool.get_all", vec![]),
        Err(ApiError::MessageParameterCountMismatch {
            method: "pool.get_all".into(),
            expected: 1,
            received: 0
        })
    );
    assert_eq!(
        call(
            &mut api,
            "pool.get_record",
            vec![s(&session), s("a"), s("b")]
        ),
        Err(ApiError::MessageParameterCountMismatch {
            method: "pool.get_record".into(),
            expected: 2,
            received: 3
        })
    );
}

#[test]
fn list_methods_contains_the_generated_and_custom_methods() {
    let mut api = api();
    let methods = call(&mut api, "system.listMethods", vec![]).unwrap();
    let names: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "system.listMethods",
        "session.login_with_password",
        "session.logout",
        "session.get_this_host",
        "session.get_this_user",
        "pool.get_all",
        "pool.get_all_records",
        "pool.get_record",
        "pool.get_by_uuid",
        "pool.get_by_name_label",
        "pool.get_master",
        "pool.set_name_label",
        "pool.add_to_other_config",
        "pool.remove_from_other_config",
        "pool.add_tags",
        "pool.remove_tags",
        "Async.pool.sync_database",
        "host.get_API_version_major",
        "host.get_API_version_minor",
        "host.get_software_version",
        "host.get_resident_VMs",
        "host_metrics.get_memory_total",
        "task.get_all_records",
        "task.cancel",
        "event.from",
        "event.inject",
        "event.register",
        "event.next",
        "message.get_all_records",
        "message.create",
    ] {
        assert!(names.contains(&expected), "missing {expected}");
    }
    for absent in [
        "session.get_all_records",
        "host.set_API_version_major",
        "event.get_all",
        "host.add_to_software_version",
    ] {
        assert!(!names.contains(&absent), "unexpected {absent}");
    }
    // Every listed method is actually routable (never MESSAGE_METHOD_UNKNOWN).
    let session = login(&mut api);
    for name in &names {
        let r = api.call(name, vec![s(&session)], T0);
        if let CallOutcome::Done(Err(ApiError::MessageMethodUnknown { .. })) = r {
            panic!("{name} is listed but unknown");
        }
    }
}

// ---------------------------------------------------------------------------------------
// records

#[test]
fn pool_and_host_records_look_like_xapi() {
    let mut api = api();
    let session = login(&mut api);
    let pools = call(&mut api, "pool.get_all", vec![s(&session)]).unwrap();
    let pool = pools.as_array().unwrap()[0].as_str().unwrap().to_string();
    assert!(pool.starts_with("OpaqueRef:"));
    let master = call(&mut api, "pool.get_master", vec![s(&session), s(&pool)]).unwrap();
    let host = master.as_str().unwrap().to_string();
    assert_eq!(host, api.host_ref());
    assert_eq!(
        call(
            &mut api,
            "host.get_API_version_major",
            vec![s(&session), s(&host)]
        ),
        Ok(Value::Int(2))
    );
    assert_eq!(
        call(
            &mut api,
            "host.get_API_version_minor",
            vec![s(&session), s(&host)]
        ),
        Ok(Value::Int(21))
    );

    let record = call(&mut api, "host.get_record", vec![s(&session), s(&host)]).unwrap();
    for name in [
        "uuid",
        "name_label",
        "name_description",
        "other_config",
        "tags",
        "software_version",
        "cpu_info",
    ] {
        field(&record, name);
    }
    assert_eq!(field(&record, "name_label"), &s("keel-test"));
    assert_eq!(field(&record, "address"), &s("192.0.2.10"));
    // The control domain (Keel itself) is the one VM resident from the start.
    assert_eq!(
        field(&record, "resident_VMs"),
        &Value::Array(vec![field(&record, "control_domain").clone()])
    );
    assert_eq!(
        field(field(&record, "software_version"), "product_brand"),
        &s("Keel")
    );
    assert_eq!(
        field(field(&record, "software_version"), "xen"),
        &s("4.19.1")
    );
    assert_eq!(field(field(&record, "cpu_info"), "cpu_count"), &s("8"));

    let metrics = field(&record, "metrics").as_str().unwrap().to_string();
    let total = call(
        &mut api,
        "host_metrics.get_memory_total",
        vec![s(&session), s(&metrics)],
    )
    .unwrap();
    assert_eq!(total, Value::Int(32 << 30));

    let all = call(&mut api, "pool.get_all_records", vec![s(&session)]).unwrap();
    let pool_record = all.as_struct().unwrap().get(&pool).unwrap();
    assert_eq!(field(pool_record, "master"), &s(&host));
    assert_eq!(field(pool_record, "other_config"), &Value::empty_struct());
    assert_eq!(field(pool_record, "tags"), &Value::Array(vec![]));
}

#[test]
fn get_by_uuid_and_name_label() {
    let mut api = api();
    let session = login(&mut api);
    let host = api.host_ref().to_string();
    let uuid = call(&mut api, "host.get_uuid", vec![s(&session), s(&host)]).unwrap();
    assert_eq!(
        call(&mut api, "host.get_by_uuid", vec![s(&session), uuid]),
        Ok(s(&host))
    );
    assert_eq!(
        call(
            &mut api,
            "host.get_by_uuid",
            vec![s(&session), s("00000000-0000-0000-0000-000000000000")]
        ),
        Err(ApiError::UuidInvalid {
            class: "host".into(),
            uuid: "00000000-0000-0000-0000-000000000000".into()
        })
    );
    assert_eq!(
        call(
            &mut api,
            "host.get_by_name_label",
            vec![s(&session), s("keel-test")]
        ),
        Ok(Value::string_array([host.as_str()]))
    );
    assert_eq!(
        call(
            &mut api,
            "host.get_by_name_label",
            vec![s(&session), s("other")]
        ),
        Ok(Value::Array(vec![]))
    );
}

#[test]
fn invalid_handles_are_reported_with_class_and_ref() {
    let mut api = api();
    let session = login(&mut api);
    let host = api.host_ref().to_string();
    assert_eq!(
        call(
            &mut api,
            "pool.get_record",
            vec![s(&session), s("OpaqueRef:nope")]
        ),
        Err(ApiError::HandleInvalid {
            class: "pool".into(),
            reference: "OpaqueRef:nope".into()
        })
    );
    // A valid ref of the wrong class is just as invalid.
    assert_eq!(
        call(&mut api, "pool.get_name_label", vec![s(&session), s(&host)]),
        Err(ApiError::HandleInvalid {
            class: "pool".into(),
            reference: host.clone()
        })
    );
}

// ---------------------------------------------------------------------------------------
// setters and maps

#[test]
fn setters_write_check_types_and_emit_mod_events() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let before = api.last_event_id();
    assert_eq!(
        call(
            &mut api,
            "pool.set_name_label",
            vec![s(&session), s(&pool), s("prod")]
        ),
        Ok(Value::str(""))
    );
    assert_eq!(
        call(&mut api, "pool.get_name_label", vec![s(&session), s(&pool)]),
        Ok(s("prod"))
    );
    assert_eq!(api.last_event_id(), before + 1);
    assert_eq!(
        call(
            &mut api,
            "pool.set_name_label",
            vec![s(&session), s(&pool), Value::Int(5)]
        ),
        Err(ApiError::FieldTypeError {
            field: "value".into()
        })
    );
    assert_eq!(
        call(
            &mut api,
            "pool.set_default_SR",
            vec![s(&session), s(&pool), s("OpaqueRef:no-such-sr")]
        ),
        Err(ApiError::HandleInvalid {
            class: "SR".into(),
            reference: "OpaqueRef:no-such-sr".into()
        })
    );
    assert!(call(
        &mut api,
        "pool.set_default_SR",
        vec![s(&session), s(&pool), s("OpaqueRef:NULL")]
    )
    .is_ok());
    // Type errors and failures change nothing and publish nothing.
    assert_eq!(
        call(&mut api, "pool.get_name_label", vec![s(&session), s(&pool)]),
        Ok(s("prod"))
    );
    assert_eq!(api.last_event_id(), before + 2);
}

#[test]
fn map_add_remove_and_duplicate_keys() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let add = |api: &mut XenApi, k: &str, v: Value| {
        call(
            api,
            "pool.add_to_other_config",
            vec![s(&session), s(&pool), s(k), v],
        )
    };
    assert!(add(&mut api, "xo:barrier", s("1")).is_ok());
    assert_eq!(
        add(&mut api, "xo:barrier", s("2")),
        Err(ApiError::MapDuplicateKey {
            class: "pool".into(),
            field: "other_config".into(),
            reference: pool.clone(),
            key: "xo:barrier".into()
        })
    );
    assert_eq!(
        add(&mut api, "k", Value::Int(1)),
        Err(ApiError::FieldTypeError {
            field: "value".into()
        })
    );
    let oc = call(
        &mut api,
        "pool.get_other_config",
        vec![s(&session), s(&pool)],
    )
    .unwrap();
    assert_eq!(oc, Value::string_map([("xo:barrier", "1")]));
    call(
        &mut api,
        "pool.remove_from_other_config",
        vec![s(&session), s(&pool), s("xo:barrier")],
    )
    .unwrap();
    // Removing an absent key is fine.
    call(
        &mut api,
        "pool.remove_from_other_config",
        vec![s(&session), s(&pool), s("xo:barrier")],
    )
    .unwrap();
    assert!(add(&mut api, "xo:barrier", s("3")).is_ok());

    call(
        &mut api,
        "pool.add_tags",
        vec![s(&session), s(&pool), s("a")],
    )
    .unwrap();
    call(
        &mut api,
        "pool.add_tags",
        vec![s(&session), s(&pool), s("a")],
    )
    .unwrap();
    call(
        &mut api,
        "pool.add_tags",
        vec![s(&session), s(&pool), s("b")],
    )
    .unwrap();
    call(
        &mut api,
        "pool.remove_tags",
        vec![s(&session), s(&pool), s("a")],
    )
    .unwrap();
    assert_eq!(
        call(&mut api, "pool.get_tags", vec![s(&session), s(&pool)]),
        Ok(Value::string_array(["b"]))
    );
    // Whole-map setter checks value types too.
    assert!(call(
        &mut api,
        "pool.set_other_config",
        vec![s(&session), s(&pool), Value::string_map([("x", "y")])]
    )
    .is_ok());
    assert_eq!(
        call(
            &mut api,
            "pool.set_other_config",
            vec![s(&session), s(&pool), s("not a map")]
        ),
        Err(ApiError::FieldTypeError {
            field: "value".into()
        })
    );
}

#[test]
fn xml_rpc_style_string_ints_are_accepted_where_ints_are_declared() {
    let mut api = api();
    let session = login(&mut api);
    let r = call(
        &mut api,
        "message.create",
        vec![
            s(&session),
            s("ALARM"),
            s("3"),
            s("Host"),
            s("u"),
            s("body"),
        ],
    )
    .unwrap();
    let r = r.as_str().unwrap().to_string();
    assert_eq!(
        call(&mut api, "message.get_priority", vec![s(&session), s(&r)]),
        Ok(Value::Int(3))
    );
    assert_eq!(
        call(
            &mut api,
            "message.create",
            vec![s(&session), s("ALARM"), s("3x"), s("Host"), s("u"), s("b")]
        ),
        Err(ApiError::FieldTypeError {
            field: "priority".into()
        })
    );
    assert_eq!(
        call(
            &mut api,
            "message.create",
            vec![
                s(&session),
                s("ALARM"),
                Value::Int(1),
                s("NotAClass"),
                s("u"),
                s("b")
            ]
        ),
        Err(ApiError::FieldTypeError {
            field: "cls".into()
        })
    );
}

// ---------------------------------------------------------------------------------------
// events

fn event_from(
    api: &mut XenApi,
    session: &str,
    classes: &[&str],
    token: &str,
    timeout: f64,
    now: Timestamp,
) -> CallOutcome {
    api.call(
        "event.from",
        vec![
            s(session),
            Value::string_array(classes.iter().copied()),
            s(token),
            Value::Float(timeout),
        ],
        now,
    )
}

#[test]
fn event_from_returns_an_injected_event() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let token = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    let token = token.as_str().unwrap().to_string();
    // Xen Orchestra's sequence: inject for a token, read records, then from(token).
    let injected_again = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    match event_from(&mut api, &session, &["pool"], &token, 60.1, T0) {
        CallOutcome::Done(Ok(result)) => {
            let events = field(&result, "events").as_array().unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(field(&events[0], "class"), &s("pool"));
            assert_eq!(field(&events[0], "operation"), &s("mod"));
            assert_eq!(field(&events[0], "ref"), &s(&pool));
            assert_eq!(
                field(field(&events[0], "snapshot"), "master"),
                &s(api.host_ref())
            );
            assert_eq!(field(&result, "token"), &injected_again);
            assert_eq!(
                field(field(&result, "valid_ref_counts"), "pool"),
                &Value::Int(1)
            );
        }
        _ => panic!("expected events"),
    }
    assert!(matches!(
        call(
            &mut api,
            "event.inject",
            vec![s(&session), s("pool"), s("OpaqueRef:x")]
        ),
        Err(ApiError::HandleInvalid { .. })
    ));
}

#[test]
fn event_from_blocks_until_a_barrier_change_arrives() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let token = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    let token = token.as_str().unwrap().to_string();
    let wait = match event_from(&mut api, &session, &["VM", "pool"], &token, 60.1, T0) {
        CallOutcome::Pending(wait) => wait,
        _ => panic!("nothing happened yet: must block"),
    };
    assert_eq!(wait.deadline(), Some(T0.plus_ms(60_100)));
    // Still nothing: stays pending.
    let wait = match api.resume(wait, T0.plus_ms(1_000)) {
        CallOutcome::Pending(w) => w,
        _ => panic!("must still block"),
    };
    let before = api.last_event_id();
    call(
        &mut api,
        "pool.add_to_other_config",
        vec![s(&session), s(&pool), s("xo:barrier"), s("x")],
    )
    .unwrap();
    assert!(
        api.last_event_id() > before,
        "the server learns it must re-poll"
    );
    match api.resume(wait, T0.plus_ms(1_001)) {
        CallOutcome::Done(Ok(result)) => {
            let events = field(&result, "events").as_array().unwrap();
            assert_eq!(events.len(), 1);
            let snapshot = field(&events[0], "snapshot");
            assert_eq!(
                field(snapshot, "other_config"),
                &Value::string_map([("xo:barrier", "x")])
            );
        }
        _ => panic!("expected the barrier event"),
    }
}

#[test]
fn event_from_times_out_with_no_events_and_a_fresh_token() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let token = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    let token = token.as_str().unwrap().to_string();
    let CallOutcome::Pending(wait) = event_from(&mut api, &session, &["host"], &token, 5.0, T0)
    else {
        panic!("must block")
    };
    // A change to an unsubscribed class does not wake it.
    call(
        &mut api,
        "pool.set_name_label",
        vec![s(&session), s(&pool), s("x")],
    )
    .unwrap();
    let CallOutcome::Pending(wait) = api.resume(wait, T0.plus_ms(4_999)) else {
        panic!("pool events must not satisfy a host subscription")
    };
    match api.resume(wait, T0.plus_ms(5_000)) {
        CallOutcome::Done(Ok(result)) => {
            assert_eq!(field(&result, "events"), &Value::Array(vec![]));
            // The token moves past the unsubscribed event so it is not re-scanned.
            assert_ne!(field(&result, "token"), &s(&token));
        }
        _ => panic!("deadline passed: must answer"),
    }
    // Zero, negative or NaN timeouts answer at once.
    for t in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            event_from(&mut api, &session, &["host"], &token, t, T0),
            CallOutcome::Done(Ok(_))
        ));
    }
}

#[test]
fn event_from_with_the_empty_token_lists_current_objects() {
    let mut api = api();
    let session = login(&mut api);
    let CallOutcome::Done(Ok(result)) = event_from(&mut api, &session, &["*"], "", 1.0, T0) else {
        panic!("must answer at once")
    };
    let events = field(&result, "events").as_array().unwrap();
    let classes: Vec<&Value> = events.iter().map(|e| field(e, "class")).collect();
    for c in ["pool", "host", "host_metrics"] {
        assert!(classes.contains(&&s(c)), "{c}");
    }
    assert!(events.iter().all(|e| field(e, "operation") == &s("add")));
}

#[test]
fn old_tokens_get_events_lost_and_junk_tokens_a_parse_failure() {
    let mut cfg = config();
    cfg.limits = Limits {
        event_history: 4,
        ..Limits::default()
    };
    let mut api = api_with(cfg);
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let token = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    for i in 0..10 {
        call(
            &mut api,
            "pool.set_name_label",
            vec![s(&session), s(&pool), s(&format!("n{i}"))],
        )
        .unwrap();
    }
    assert!(matches!(
        event_from(
            &mut api,
            &session,
            &["pool"],
            token.as_str().unwrap(),
            1.0,
            T0
        ),
        CallOutcome::Done(Err(ApiError::EventsLost))
    ));
    assert!(matches!(
        event_from(&mut api, &session, &["pool"], "garbage", 1.0, T0),
        CallOutcome::Done(Err(ApiError::EventFromTokenParseFailure { .. }))
    ));
}

#[test]
fn a_pending_event_from_fails_once_its_session_is_gone() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    let token = call(
        &mut api,
        "event.inject",
        vec![s(&session), s("pool"), s(&pool)],
    )
    .unwrap();
    let CallOutcome::Pending(wait) = event_from(
        &mut api,
        &session,
        &["pool"],
        token.as_str().unwrap(),
        30.0,
        T0,
    ) else {
        panic!("must block")
    };
    call(&mut api, "session.logout", vec![s(&session)]).unwrap();
    assert!(matches!(
        api.resume(wait, T0),
        CallOutcome::Done(Err(ApiError::SessionInvalid { .. }))
    ));
}

#[test]
fn legacy_register_next_unregister() {
    let mut api = api();
    let session = login(&mut api);
    let pool = api.pool_ref().to_string();
    assert_eq!(
        call(&mut api, "event.next", vec![s(&session)]),
        Err(ApiError::SessionNotRegistered {
            session: session.clone()
        })
    );
    call(
        &mut api,
        "event.register",
        vec![s(&session), Value::string_array(["pool"])],
    )
    .unwrap();
    let CallOutcome::Pending(wait) = api.call("event.next", vec![s(&session)], T0) else {
        panic!("no events yet: must block")
    };
    assert_eq!(
        wait,
        Wait::EventNext {
            session: session.clone()
        }
    );
    call(
        &mut api,
        "pool.set_name_label",
        vec![s(&session), s(&pool), s("x")],
    )
    .unwrap();
    match api.resume(wait, T0) {
        CallOutcome::Done(Ok(Value::Array(events))) => {
            assert_eq!(events.len(), 1);
            assert_eq!(field(&events[0], "operation"), &s("mod"));
        }
        _ => panic!("expected the event"),
    }
    // Consumed: the next call blocks again.
    assert!(matches!(
        api.call("event.next", vec![s(&session)], T0),
        CallOutcome::Pending(_)
    ));
    call(
        &mut api,
        "event.unregister",
        vec![s(&session), Value::string_array(["pool"])],
    )
    .unwrap();
    assert!(matches!(
        call(&mut api, "event.next", vec![s(&session)]),
        Err(ApiError::SessionNotRegistered { .. })
    ));
}

#[test]
fn host_fact_updates_publish_only_real_changes() {
    let mut api = api();
    let before = api.last_event_id();
    api.update_host_facts(&facts(), T0);
    assert_eq!(api.last_event_id(), before, "nothing changed");
    let mut f = facts();
    f.memory_free_bytes = 1 << 30;
    api.update_host_facts(&f, T0.plus_ms(1));
    assert!(api.last_event_id() > before);
    let session = login(&mut api);
    let host = api.host_ref().to_string();
    let metrics = call(&mut api, "host.get_metrics", vec![s(&session), s(&host)]).unwrap();
    assert_eq!(
        call(
            &mut api,
            "host_metrics.get_memory_free",
            vec![s(&session), metrics]
        ),
        Ok(Value::Int(1 << 30))
    );
}

// ---------------------------------------------------------------------------------------
// tasks, with a test-only class showing how a later issue adds one

/// A job that finishes after `steps` steps with a ref result, or fails on request.
struct Countdown {
    left: i64,
    total: i64,
    fail: bool,
    cancellable: bool,
}

impl Job for Countdown {
    fn step(&mut self, ctx: &mut CallContext<'_>) -> JobStep {
        self.left -= 1;
        if self.left > 0 {
            return JobStep::Progress((self.total - self.left) as f64 / self.total as f64);
        }
        if self.fail {
            JobStep::Failed(ApiError::OperationNotAllowed {
                reason: "demo failure".into(),
            })
        } else {
            JobStep::Done(Value::String(ctx.host_ref().to_string()))
        }
    }

    fn cancel(&mut self) -> bool {
        self.cancellable
    }
}

fn demo_run(_ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let steps = args.int(0)?;
    Ok(Outcome::Job(Box::new(Countdown {
        left: steps,
        total: steps,
        fail: steps == 13,
        cancellable: steps != 99,
    })))
}

fn demo_create(ctx: &mut CallContext<'_>, args: &Args) -> Result<Outcome, ApiError> {
    let class = ctx.db().class("demo").expect("declared");
    let now = ctx.now;
    let parent = args.str(1)?.to_string();
    let r = ctx.db_mut().create(
        class,
        vec![
            ("name_label", Value::str(args.str(0)?)),
            ("parent", Value::String(parent)),
        ],
        now,
    );
    Ok(Outcome::Value(Value::String(r)))
}

static DEMO: ClassDecl = ClassDecl {
    name: "demo",
    flags: OBJECTS,
    fields: &[
        ro("uuid", FieldType::String),
        rw("name_label", FieldType::String),
        rw(
            "other_config",
            FieldType::Map(&FieldType::String, &FieldType::String),
        ),
        ro("parent", FieldType::Ref("demo")),
        inverse("children", "demo", "parent"),
    ],
    messages: &[
        msg("run", &[param("steps", FieldType::Int)], demo_run).asyncable(),
        // `parent` may be NULL, so it is declared as a plain string.
        msg(
            "create",
            &[
                param("name", FieldType::String),
                param("parent", FieldType::String),
            ],
            demo_create,
        ),
    ],
};

static DEMO_SCHEMA: &[&ClassDecl] = &[
    &classes::SESSION,
    &classes::POOL,
    &classes::HOST,
    &classes::HOST_METRICS,
    &classes::TASK,
    &classes::EVENT,
    &classes::MESSAGE,
    &DEMO,
];

fn demo_api() -> XenApi {
    let mut cfg: Config = config();
    cfg.schema = DEMO_SCHEMA;
    api_with(cfg)
}

fn task_field(api: &mut XenApi, session: &str, task: &str, name: &str) -> Value {
    let record = call(api, "task.get_record", vec![s(session), s(task)]).unwrap();
    field(&record, name).clone()
}

#[test]
fn a_declared_class_gets_generated_messages_and_inverse_refs() {
    let mut api = demo_api();
    let session = login(&mut api);
    let methods = call(&mut api, "system.listMethods", vec![]).unwrap();
    let names: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        "demo.get_all_records",
        "demo.get_children",
        "demo.add_to_other_config",
        "Async.demo.run",
        "demo.run",
    ] {
        assert!(names.contains(&m), "{m}");
    }
    assert!(!names.contains(&"demo.set_children"));
    assert!(!names.contains(&"Async.demo.create"));
    let root = call(
        &mut api,
        "demo.create",
        vec![s(&session), s("root"), s("OpaqueRef:NULL")],
    )
    .unwrap();
    let root = root.as_str().unwrap().to_string();
    let child = call(
        &mut api,
        "demo.create",
        vec![s(&session), s("child"), s(&root)],
    )
    .unwrap();
    // The inverse field is computed from the child's `parent`: references go both ways.
    assert_eq!(
        call(&mut api, "demo.get_children", vec![s(&session), s(&root)]),
        Ok(Value::Array(vec![child.clone()]))
    );
    assert_eq!(
        call(
            &mut api,
            "demo.get_parent",
            vec![s(&session), child.clone()]
        ),
        Ok(s(&root))
    );
    let all = call(&mut api, "demo.get_all_records", vec![s(&session)]).unwrap();
    assert_eq!(all.as_struct().unwrap().len(), 2);
    assert_eq!(
        call(
            &mut api,
            "demo.get_by_name_label",
            vec![s(&session), s("child")]
        ),
        Ok(Value::Array(vec![child]))
    );
}

#[test]
fn async_call_of_an_immediate_message_gives_a_finished_task() {
    let mut api = api();
    let session = login(&mut api);
    let task = call(&mut api, "Async.pool.sync_database", vec![s(&session)]).unwrap();
    let task = task.as_str().unwrap().to_string();
    assert!(task.starts_with("OpaqueRef:"));
    assert_eq!(
        task_field(&mut api, &session, &task, "status"),
        s("success")
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "progress"),
        Value::Float(1.0)
    );
    assert_eq!(task_field(&mut api, &session, &task, "result"), s(""));
    assert_eq!(
        task_field(&mut api, &session, &task, "name_label"),
        s("Async.pool.sync_database")
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "resident_on"),
        s(api.host_ref())
    );
}

#[test]
fn async_job_reports_progress_then_an_xml_rpc_result() {
    let mut api = demo_api();
    let session = login(&mut api);
    let task = call(&mut api, "Async.demo.run", vec![s(&session), s("4")]).unwrap();
    let task = task.as_str().unwrap().to_string();
    assert_eq!(
        task_field(&mut api, &session, &task, "status"),
        s("pending")
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "progress"),
        Value::Float(0.0)
    );
    let before = api.last_event_id();
    assert_eq!(api.run_tasks(T0.plus_ms(10)), 1);
    assert_eq!(
        task_field(&mut api, &session, &task, "progress"),
        Value::Float(0.25)
    );
    assert!(
        api.last_event_id() > before,
        "progress is published as a task event"
    );
    while api.has_running_tasks() {
        api.run_tasks(T0.plus_ms(20));
    }
    assert_eq!(
        task_field(&mut api, &session, &task, "status"),
        s("success")
    );
    // The result is XML-RPC text whatever protocol the client speaks.
    let expected = format!("<value>{}</value>", api.host_ref());
    assert_eq!(
        task_field(&mut api, &session, &task, "result"),
        s(&expected)
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "finished"),
        Value::DateTime(T0.plus_ms(20).to_xapi_datetime())
    );
}

#[test]
fn failing_job_fills_error_info() {
    let mut api = demo_api();
    let session = login(&mut api);
    let task = call(
        &mut api,
        "Async.demo.run",
        vec![s(&session), Value::Int(13)],
    )
    .unwrap();
    let task = task.as_str().unwrap().to_string();
    while api.has_running_tasks() {
        api.run_tasks(T0);
    }
    assert_eq!(
        task_field(&mut api, &session, &task, "status"),
        s("failure")
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "error_info"),
        Value::string_array(["OPERATION_NOT_ALLOWED", "demo failure"])
    );
}

#[test]
fn synchronous_call_of_a_job_waits_for_its_task() {
    let mut api = demo_api();
    let session = login(&mut api);
    let CallOutcome::Pending(wait) = api.call("demo.run", vec![s(&session), Value::Int(2)], T0)
    else {
        panic!("a job must make the sync call wait")
    };
    let Wait::Task { task } = wait.clone() else {
        panic!("waits on a task")
    };
    let CallOutcome::Pending(wait) = api.resume(wait, T0) else {
        panic!("not done yet")
    };
    api.run_tasks(T0);
    api.run_tasks(T0);
    match api.resume(wait, T0) {
        CallOutcome::Done(Ok(v)) => assert_eq!(v, s(api.host_ref())),
        _ => panic!("expected the job's value"),
    }
    // The internal task is gone once its result was delivered.
    assert!(matches!(
        call(&mut api, "task.get_record", vec![s(&session), s(&task)]),
        Err(ApiError::HandleInvalid { .. })
    ));
}

#[test]
fn cancelling_a_running_task() {
    let mut api = demo_api();
    let session = login(&mut api);
    let task = call(
        &mut api,
        "Async.demo.run",
        vec![s(&session), Value::Int(50)],
    )
    .unwrap();
    let task = task.as_str().unwrap().to_string();
    api.run_tasks(T0);
    call(&mut api, "task.cancel", vec![s(&session), s(&task)]).unwrap();
    assert_eq!(
        task_field(&mut api, &session, &task, "status"),
        s("cancelled")
    );
    assert_eq!(
        task_field(&mut api, &session, &task, "error_info"),
        Value::string_array(["TASK_CANCELLED", task.as_str()])
    );
    assert!(!api.has_running_tasks());
    assert!(matches!(
        call(&mut api, "task.cancel", vec![s(&session), s(&task)]),
        Err(ApiError::OperationNotAllowed { .. })
    ));
    // A job that cannot stop at once goes to `cancelling` and keeps running.
    let slow = call(
        &mut api,
        "Async.demo.run",
        vec![s(&session), Value::Int(99)],
    )
    .unwrap();
    let slow = slow.as_str().unwrap().to_string();
    call(&mut api, "task.cancel", vec![s(&session), s(&slow)]).unwrap();
    assert_eq!(
        task_field(&mut api, &session, &slow, "status"),
        s("cancelling")
    );
    assert!(api.has_running_tasks());
}

#[test]
fn pending_tasks_are_bounded_and_finished_ones_evicted() {
    let mut cfg = config();
    cfg.schema = DEMO_SCHEMA;
    cfg.limits = Limits {
        max_pending_tasks: 2,
        max_tasks: 4,
        ..Limits::default()
    };
    let mut api = api_with(cfg);
    let session = login(&mut api);
    call(&mut api, "Async.demo.run", vec![s(&session), Value::Int(9)]).unwrap();
    call(&mut api, "Async.demo.run", vec![s(&session), Value::Int(9)]).unwrap();
    assert_eq!(
        call(&mut api, "Async.demo.run", vec![s(&session), Value::Int(9)]),
        Err(ApiError::TooManyPendingTasks)
    );
    while api.has_running_tasks() {
        api.run_tasks(T0);
    }
    for _ in 0..10 {
        call(&mut api, "Async.pool.sync_database", vec![s(&session)]).unwrap();
    }
    let tasks = call(&mut api, "task.get_all", vec![s(&session)]).unwrap();
    assert!(tasks.as_array().unwrap().len() <= 4);
}

#[test]
fn client_created_tasks_and_subtask_inverse() {
    let mut api = api();
    let session = login(&mut api);
    let t = call(
        &mut api,
        "task.create",
        vec![s(&session), s("import"), s("desc")],
    )
    .unwrap();
    let t = t.as_str().unwrap().to_string();
    assert_eq!(task_field(&mut api, &session, &t, "status"), s("pending"));
    assert_eq!(
        task_field(&mut api, &session, &t, "subtasks"),
        Value::Array(vec![])
    );
    call(&mut api, "task.destroy", vec![s(&session), s(&t)]).unwrap();
    assert!(matches!(
        call(&mut api, "task.get_status", vec![s(&session), s(&t)]),
        Err(ApiError::HandleInvalid { .. })
    ));
}
