//! The management API on a booted Keel, driven by the real Python `XenAPI` SDK and by raw
//! HTTP through QEMU's port forward.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keel_tests::credentials::test_credentials;
use keel_tests::kernel_lines::READY_PREFIX;
use keel_tests::python::run_script;
use keel_tests::{HarnessError, Machine, NicModel, Pattern, Vm, BOOT_DEADLINE};

fn boot_with_api(name: &str) -> Result<(Vm, u16), HarnessError> {
    let vm = Machine::new(name)
        .nic_with_api(NicModel::VirtioNet)
        .append(test_credentials().cmdline_word())
        .boot()?;
    vm.wait_for(Pattern::starts_with(READY_PREFIX), BOOT_DEADLINE)?;
    let port = vm.api_port().expect("the machine forwards an API port");
    Ok((vm, port))
}

/// Each check prints `ok <name>`; the Rust side asserts every one of them.
const SDK_SCRIPT: &str = r#"
import sys, time, xmlrpc.client, XenAPI
url, password = sys.argv[1], sys.argv[2]

def ok(name):
    print("ok", name, flush=True)

bad = XenAPI.Session(url)
try:
    bad.xenapi.login_with_password("root", "not-the-password", "1.0", "keel-tests")
    print("wrong password accepted")
except XenAPI.Failure as e:
    assert e.details[0] == "SESSION_AUTHENTICATION_FAILED", e.details
    ok("wrong-password")

s = XenAPI.Session(url)
s.xenapi.login_with_password("root", password, "1.0", "keel-tests")
ok("login")

methods = s.xenapi.system.listMethods()
for m in ["session.login_with_password", "pool.get_all_records", "host.get_record", "event.from", "task.get_status"]:
    assert m in methods, m
ok("listMethods")

pools = s.xenapi.pool.get_all_records()
assert len(pools) == 1, pools
pool_ref, pool = next(iter(pools.items()))
host_ref = s.xenapi.pool.get_master(pool_ref)
assert pool["master"] == host_ref
host = s.xenapi.host.get_record(host_ref)
assert host["API_version_major"] == "2", host["API_version_major"]
assert host["software_version"]["product_version"], host["software_version"]
assert int(host["cpu_info"]["cpu_count"]) >= 1
assert host["address"] == "10.0.2.15", host["address"]
metrics = s.xenapi.host_metrics.get_record(host["metrics"])
assert int(metrics["memory_total"]) > 0 and int(metrics["memory_free"]) > 0, metrics
assert s.xenapi.host.get_by_uuid(host["uuid"]) == host_ref
ok("records")

token = s.xenapi.event.inject("pool", pool_ref)
s.xenapi.pool.add_to_other_config(pool_ref, "keel-barrier", "1")
start = time.time()
event_from = getattr(s.xenapi.event, "from")
result = event_from(["pool"], token, 10.0)
events = result["events"]
assert any(e["class"] == "pool" and e["ref"] == pool_ref for e in events), events
assert time.time() - start < 9, "event.from waited for its timeout despite an event"
ok("event.from")

start = time.time()
quiet = event_from(["pool"], result["token"], 1.0)
waited = time.time() - start
assert quiet["events"] == [] and 0.8 < waited < 5, (quiet, waited)
ok("event.from-timeout")

task = s.xenapi.Async.pool.sync_database()
for _ in range(100):
    status = s.xenapi.task.get_status(task)
    if status != "pending":
        break
    time.sleep(0.05)
assert status == "success", status
assert float(s.xenapi.task.get_progress(task)) == 1.0
ok("async-task")

try:
    s.xenapi.host.get_record("OpaqueRef:00000000-0000-0000-0000-000000000000")
except XenAPI.Failure as e:
    assert e.details[0] == "HANDLE_INVALID", e.details
    ok("handle-invalid")

session_ref = s._session
s.xenapi.session.logout()
raw = xmlrpc.client.ServerProxy(url)
reply = raw.pool.get_all(session_ref)
assert reply["Status"] == "Failure" and reply["ErrorDescription"][0] == "SESSION_INVALID", reply
ok("logout")
"#;

#[test]
fn python_sdk_drives_sessions_records_events_and_tasks() -> Result<(), HarnessError> {
    let (vm, port) = boot_with_api("api_python_sdk")?;
    let url = format!("http://127.0.0.1:{port}");
    let out = run_script(SDK_SCRIPT, &[&url, &test_credentials().password]);
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("{e}\nconsole: {}", vm.log_path().display()),
    };
    for check in [
        "wrong-password",
        "login",
        "listMethods",
        "records",
        "event.from",
        "event.from-timeout",
        "async-task",
        "handle-invalid",
        "logout",
    ] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "check {check} did not pass:\n{out}"
        );
    }
    Ok(())
}

/// Sends raw bytes and returns the status code of the answer (0 if the connection closed
/// without one).
fn raw_status(port: u16, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the port forward");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer and close before taking everything (413 on a huge body).
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&reply);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn raw_http_limits_and_malformed_requests_get_clear_answers() -> Result<(), HarnessError> {
    let (vm, port) = boot_with_api("api_raw_http")?;
    // A slow client holding a half-sent head must not stall anyone else.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"POST /RPC2 HTTP/1.1\r\nHost: k").unwrap();

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "page",
            b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n".to_vec(),
            200,
        ),
        (
            "unknown path",
            b"GET /nope HTTP/1.1\r\nHost: keel\r\n\r\n".to_vec(),
            404,
        ),
        ("garbage", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), 400),
        (
            "no host",
            b"POST /RPC2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "huge body",
            b"POST /RPC2 HTTP/1.1\r\nHost: keel\r\nContent-Length: 104857600\r\n\r\n<?xml".to_vec(),
            413,
        ),
        (
            "huge head",
            [
                b"GET / HTTP/1.1\r\nHost: keel\r\nX-Pad: ".as_slice(),
                &vec![b'a'; 16 * 1024],
                b"\r\n\r\n",
            ]
            .concat(),
            431,
        ),
        (
            "bad chunk",
            b"POST /RPC2 HTTP/1.1\r\nHost: keel\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
            400,
        ),
        (
            "unsupported coding",
            b"POST /RPC2 HTTP/1.1\r\nHost: keel\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
    ];
    for (name, request, expected) in cases {
        let got = raw_status(port, &request);
        assert_eq!(
            got,
            expected,
            "{name}: expected {expected}, got {got}; console: {}",
            vm.log_path().display()
        );
    }
    // A malformed XML-RPC body is a XenAPI failure, not an HTTP error.
    let body = "<?xml version='1.0'?><methodCall><methodName>pool.get_all";
    let request = format!("POST /RPC2 HTTP/1.1\r\nHost: keel\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    assert_eq!(raw_status(port, request.as_bytes()), 200);

    // The service still logs a real client in.
    let script = "import sys, XenAPI\ns = XenAPI.Session(sys.argv[1])\ns.xenapi.login_with_password('root', sys.argv[2])\nprint('ok')";
    let out = run_script(
        script,
        &[
            &format!("http://127.0.0.1:{port}"),
            &test_credentials().password,
        ],
    )?;
    assert_eq!(out.trim(), "ok");
    drop(slow);
    Ok(())
}
