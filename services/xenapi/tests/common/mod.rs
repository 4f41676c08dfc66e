//! Shared fixtures for the host tests: deterministic entropy, a service with a known root
//! password (hashed with test-only Argon2 cost), and call helpers.
#![allow(dead_code)]

use keel_xenapi::{
    hash_password, CallOutcome, Config, Entropy, HashCost, HostFacts, Timestamp, Value, XenApi,
};

pub const PASSWORD: &str = "pa<ss&word"; // the password in the Python fixtures
pub const T0: Timestamp = Timestamp::from_unix_ms(1_700_000_000_000);

/// xorshift64*: deterministic, good enough to make distinct UUIDs in tests.
pub struct TestEntropy(pub u64);

impl Entropy for TestEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

pub fn facts() -> HostFacts {
    HostFacts {
        hostname: "keel-test".into(),
        address: "192.0.2.10".into(),
        cpu_count: 8,
        socket_count: 1,
        cpu_vendor: "GenuineIntel".into(),
        cpu_model_name: "Test CPU".into(),
        cpu_speed_mhz: 2400,
        memory_total_bytes: 32 << 30,
        memory_free_bytes: 30 << 30,
        xen_version: "4.19.1".into(),
        product_version: "0.1.0".into(),
        ..HostFacts::default()
    }
}

pub fn config() -> Config {
    let phc = hash_password(
        PASSWORD.as_bytes(),
        b"test-salt-16byte",
        HashCost::TEST_ONLY,
    )
    .expect("test hash");
    Config::new(phc, facts())
}

pub fn api_with(config: Config) -> XenApi {
    XenApi::new(config, Box::new(TestEntropy(0x1234_5678_9abc_def1)), T0).expect("service")
}

pub fn api() -> XenApi {
    api_with(config())
}

pub fn s(text: &str) -> Value {
    Value::str(text)
}

/// Run a call that must complete at once.
pub fn call(
    api: &mut XenApi,
    method: &str,
    params: Vec<Value>,
) -> Result<Value, keel_xenapi::ApiError> {
    call_at(api, method, params, T0)
}

pub fn call_at(
    api: &mut XenApi,
    method: &str,
    params: Vec<Value>,
    now: Timestamp,
) -> Result<Value, keel_xenapi::ApiError> {
    match api.call(method, params, now) {
        CallOutcome::Done(r) => r,
        CallOutcome::Pending(w) => panic!("{method} unexpectedly pending: {w:?}"),
    }
}

pub fn login(api: &mut XenApi) -> String {
    let v = call(
        api,
        "session.login_with_password",
        vec![s("root"), s(PASSWORD), s("2.21"), s("test")],
    )
    .expect("login");
    v.as_str().expect("session ref").to_string()
}

pub fn field<'a>(record: &'a Value, name: &str) -> &'a Value {
    record
        .as_struct()
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("no field {name} in {record:?}"))
}

/// `method(session, args…)` driven to its answer: a call that runs a job is resumed, the
/// API's tasks run between, until it is done.
pub fn call_driven(
    api: &mut XenApi,
    session: &str,
    now: Timestamp,
    method: &str,
    args: Vec<Value>,
) -> Result<Value, keel_xenapi::ApiError> {
    let mut params = vec![s(session)];
    params.extend(args);
    let mut wait = match api.call(method, params, now) {
        CallOutcome::Done(r) => return r,
        CallOutcome::Pending(w) => w,
    };
    for _ in 0..1000 {
        api.run_tasks(now);
        match api.resume(wait, now) {
            CallOutcome::Done(r) => return r,
            CallOutcome::Pending(w) => wait = w,
        }
    }
    panic!("{method} never finished");
}

/// A test's logged-in client: `call` is the test's own (usually [`call_driven`]); the rest
/// follow from it.
pub trait Client {
    fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, keel_xenapi::ApiError>;

    /// A call that must succeed.
    fn ok(&mut self, method: &str, args: Vec<Value>) -> Value {
        self.call(method, args)
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    /// A call that must fail.
    fn err(&mut self, method: &str, args: Vec<Value>) -> keel_xenapi::ApiError {
        match self.call(method, args) {
            Ok(v) => panic!("{method} succeeded with {v:?}"),
            Err(e) => e,
        }
    }

    /// `class.get_field(r)`.
    fn get(&mut self, class: &str, r: &str, field: &str) -> Value {
        self.ok(&format!("{class}.get_{field}"), vec![s(r)])
    }
}

/// A string value's text.
pub fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v:?}"))
        .to_string()
}

/// An array of strings, in order.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v:?}"))
        .iter()
        .map(text)
        .collect()
}

/// An array of strings, sorted (sets whose order the API does not promise).
pub fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out = strings(v);
    out.sort();
    out
}

/// An error's code (the first word of its description).
pub fn code(e: &keel_xenapi::ApiError) -> String {
    e.description().remove(0)
}

/// A struct value from `(field, value)` pairs.
pub fn record(pairs: &[(&str, Value)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}
