//! The metering routes of a connection, with xapi's paths and parameters (docs/metering.md,
//! "Endpoints"): `GET /rrd_updates`, `GET /host_rrd`, `GET /vm_rrd?uuid=`,
//! `GET /usage?from=&to=&format=` and `POST /usage/ack?from=&to=`. Every one needs a live
//! `session_id` (query or cookie), as xapi's HTTP handlers do. Answers are built whole
//! (bounded by keel-metering: an `/rrd_updates` answer holds at most `MAX_CELLS` values) and
//! go out as one response; nonsense gets a 4xx with a one-line reason.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_http::{Method, Request};
use keel_xenapi::keel_metering::{
    ExportError, UpdatesQuery, UsageFormat, UsageParamError, UsageQuery,
};
use keel_xenapi::{Timestamp, XenApi};

use super::Conn;
use crate::metering::{MeteringAccess, UsageFailure};

const RRD_UPDATES: &str = "/rrd_updates";
const HOST_RRD: &str = "/host_rrd";
const VM_RRD: &str = "/vm_rrd";
const USAGE: &str = "/usage";
const USAGE_ACK: &str = "/usage/ack";

/// The parameters `/rrd_updates` reads (the rest, `session_id` included, are ignored by it).
const UPDATES_PARAMS: &[&str] = &["start", "interval", "cf", "host", "json", "vm_uuid", "uuid"];
const USAGE_PARAMS: &[&str] = &["from", "to", "format"];

const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain; charset=utf-8")];
const XML: &[(&str, &str)] = &[("Content-Type", "text/xml")];
const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];
const CSV: &[(&str, &str)] = &[("Content-Type", "text/csv; charset=utf-8")];

/// Whether a request is for one of the metering routes.
pub(crate) fn is_metering_path(path: &str) -> bool {
    matches!(path, RRD_UPDATES | HOST_RRD | VM_RRD | USAGE | USAGE_ACK)
}

/// An answer: status, headers, body.
type Answer = (u16, &'static [(&'static str, &'static str)], Vec<u8>);

fn text(status: u16, message: String) -> Answer {
    let mut body = message.into_bytes();
    body.push(b'\n');
    (status, TEXT, body)
}

fn export_refusal(error: ExportError) -> Answer {
    let status = match &error {
        ExportError::MissingParameter(_)
        | ExportError::BadParameter { .. }
        | ExportError::StartInFuture { .. }
        | ExportError::RangeTooLarge { .. }
        | ExportError::BadInterval(_) => 400,
        ExportError::UnknownUuid(_) => 404,
        ExportError::TooLarge { .. } => 413,
        ExportError::OutOfMemory => 503,
    };
    let reason = match error {
        ExportError::MissingParameter(name) => format!("missing parameter {name}"),
        ExportError::BadParameter { name, value } => format!("bad {name}: {value:?}"),
        ExportError::StartInFuture { start, now } => {
            format!("start {start} is in the future (now {now})")
        }
        ExportError::RangeTooLarge { start } => {
            format!("start {start} is older than anything kept (a year)")
        }
        ExportError::BadInterval(interval) => format!("interval {interval} s is too long"),
        ExportError::UnknownUuid(uuid) => format!("no metered VM or host {uuid}"),
        ExportError::TooLarge { cells } => {
            format!("the answer would hold {cells} values: ask for one cf, one VM or a later start")
        }
        ExportError::OutOfMemory => String::from("no memory for this answer now; retry later"),
    };
    text(status, reason)
}

fn usage_param_refusal(error: UsageParamError) -> Answer {
    match error {
        UsageParamError::Missing(name) => text(400, format!("missing parameter {name}")),
        UsageParamError::Bad { name, value } => text(400, format!("bad {name}: {value:?}")),
    }
}

fn usage_refusal(error: UsageFailure) -> Answer {
    match error {
        UsageFailure::BadPeriod { from, to } => text(
            400,
            format!("bad period {from}..{to}: whole hours, from < to, at most 400 days"),
        ),
        UsageFailure::NothingExported => text(
            409,
            String::from("none of the period's rows were exported: export them first"),
        ),
        UsageFailure::Unavailable(why) => text(503, why),
        UsageFailure::Internal(why) => text(500, why),
    }
}

/// `session_id` from a `Cookie` header, as xapi accepts it.
fn session_cookie(request: &Request) -> Option<String> {
    let cookies = request.header_str("cookie")?;
    cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == "session_id").then(|| String::from(value))
    })
}

/// The named query parameters present, percent-decoded.
fn params(
    request: &Request,
    names: &[&'static str],
) -> Result<Vec<(&'static str, String)>, Answer> {
    let mut out = Vec::new();
    for &name in names {
        match request.query_param(name) {
            Ok(Some(value)) => out.push((name, value)),
            Ok(None) => {}
            Err(e) => return Err(text(400, format!("bad query parameter {name}: {e}"))),
        }
    }
    Ok(out)
}

/// Whether the `Accept` header prefers JSON (xapi answers `/rrd_updates` in JSON then).
fn accepts_json(request: &Request) -> bool {
    request.header_str("accept").is_some_and(|accept| {
        accept
            .split(',')
            .next()
            .is_some_and(|first| first.trim().starts_with("application/json"))
    })
}

fn answer(
    request: &Request,
    api: &XenApi,
    metering: Option<&mut (dyn MeteringAccess + 'static)>,
    now: Timestamp,
) -> Answer {
    let path = request.path.as_str();
    let method_ok = match path {
        USAGE_ACK => request.method == Method::Post,
        _ => matches!(request.method, Method::Get | Method::Head),
    };
    if !method_ok {
        let allow: &'static [(&'static str, &'static str)] = if path == USAGE_ACK {
            &[("Allow", "POST"), ("Content-Type", "text/plain")]
        } else {
            &[("Allow", "GET"), ("Content-Type", "text/plain")]
        };
        return (405, allow, b"wrong method\n".to_vec());
    }
    let session = match request.query_param("session_id") {
        Ok(session) => session
            .or_else(|| session_cookie(request))
            .unwrap_or_default(),
        Err(e) => return text(400, format!("bad query parameter session_id: {e}")),
    };
    if !api.session_is_valid(&session) {
        return text(
            401,
            String::from("SESSION_INVALID: log in and pass session_id"),
        );
    }
    let Some(metering) = metering else {
        return text(404, String::from("no metering on this host"));
    };
    let now_s = now.unix_ms / 1000;
    match path {
        RRD_UPDATES => {
            let given = match params(request, UPDATES_PARAMS) {
                Ok(given) => given,
                Err(refusal) => return refusal,
            };
            let query = UpdatesQuery::from_params(given.iter().map(|(k, v)| (*k, v.as_str())));
            let mut query = match query {
                Ok(query) => query,
                Err(e) => return export_refusal(e),
            };
            query.json |= accepts_json(request);
            match metering.rrd_updates(now_s, &query) {
                Ok(body) => (200, if query.json { JSON } else { XML }, body.into_bytes()),
                Err(e) => export_refusal(e),
            }
        }
        HOST_RRD => match metering.host_rrd() {
            Ok(body) => (200, XML, body.into_bytes()),
            Err(e) => export_refusal(e),
        },
        VM_RRD => {
            let uuid = match request.query_param("uuid") {
                Ok(Some(uuid)) => uuid,
                Ok(None) => return text(400, String::from("missing parameter uuid")),
                Err(e) => return text(400, format!("bad query parameter uuid: {e}")),
            };
            match metering.vm_rrd(&uuid) {
                Ok(body) => (200, XML, body.into_bytes()),
                Err(e) => export_refusal(e),
            }
        }
        _ => {
            let given = match params(request, USAGE_PARAMS) {
                Ok(given) => given,
                Err(refusal) => return refusal,
            };
            let query = match UsageQuery::from_params(given.iter().map(|(k, v)| (*k, v.as_str()))) {
                Ok(query) => query,
                Err(e) => return usage_param_refusal(e),
            };
            if path == USAGE_ACK {
                return match metering.usage_ack(query.from, query.to) {
                    Ok(report) => (
                        200,
                        JSON,
                        format!(
                            "{{\"acknowledged_rows\":{},\"kept_rows\":{}}}",
                            report.acknowledged_rows, report.kept_rows
                        )
                        .into_bytes(),
                    ),
                    Err(e) => usage_refusal(e),
                };
            }
            match metering.usage_export(&query) {
                Ok(body) => {
                    let headers = match query.format {
                        UsageFormat::Json => JSON,
                        UsageFormat::Csv => CSV,
                    };
                    (200, headers, body.into_bytes())
                }
                Err(e) => usage_refusal(e),
            }
        }
    }
}

impl Conn {
    /// A request head on a metering route: answered at the request's end (at once, closing
    /// the connection, if it came with a body).
    pub(super) fn on_metering_head(
        &mut self,
        request: &Request,
        api: &XenApi,
        metering: Option<&mut (dyn MeteringAccess + 'static)>,
        now: Timestamp,
    ) {
        let (status, headers, body) = answer(request, api, metering, now);
        self.answer_ignoring_body(request, status, headers, body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;
    use keel_http::{BodyKind, Header, Version};
    use keel_xenapi::keel_metering::fakes::MemUsageStore;
    use keel_xenapi::keel_metering::figures::{HostFigures, VmFigures};
    use keel_xenapi::keel_metering::{Metering, Usage, UsageConfig, VmIdentity, VmUsageSample};
    use keel_xenapi::{hash_password, Config, Entropy, HashCost, HostFacts};

    use crate::metering::Meters;

    const HOST: &str = "c0ffee00-0000-4000-8000-000000000001";
    const VM: &str = "0b5e55ed-0000-4000-8000-000000000002";
    /// 2026-11-18T11:00:00Z: a whole hour.
    const HOUR_S: u64 = 1_795_000_000 / 3600 * 3600;

    struct TestEntropy(u64);
    impl Entropy for TestEntropy {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = self.0 as u8;
            }
        }
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_unix_ms(s * 1000)
    }

    struct World {
        api: XenApi,
        session: String,
        meters: Rc<RefCell<Meters<MemUsageStore>>>,
    }

    fn world() -> World {
        let phc = hash_password(b"pw", b"test-salt-16byte", HashCost::TEST_ONLY).unwrap();
        let mut api = XenApi::new(
            Config::new(phc, HostFacts::default()),
            Box::new(TestEntropy(7)),
            at(HOUR_S),
        )
        .unwrap();
        let session = match api.call(
            "session.login_with_password",
            vec![
                keel_xenapi::Value::str("root"),
                keel_xenapi::Value::str("pw"),
            ],
            at(HOUR_S),
        ) {
            keel_xenapi::CallOutcome::Done(Ok(v)) => String::from(v.as_str().unwrap()),
            _ => panic!("login"),
        };
        let (usage, _) = Usage::open(MemUsageStore::new(), UsageConfig::default()).unwrap();
        let mut meters = Meters {
            metering: Metering::new(HOST).unwrap(),
            usage,
        };
        // Three samples, 5 s apart, ten minutes into the hour: one busy vCPU.
        let identity = VmIdentity {
            name: String::from("web, \"prod\""),
            tags: vec![String::from("tenant=acme")],
            tenant: Some(String::from("acme")),
        };
        for step in 0..3u64 {
            let now_ms = (HOUR_S + 600 + step * 5) * 1000;
            let host = HostFigures {
                cpu_busy_ns: vec![step * 5_000_000_000, 0],
                memory_total_bytes: 8 << 30,
                memory_free_bytes: 4 << 30,
                heap_used_bytes: 0,
                pifs: Vec::new(),
            };
            let vm = VmFigures {
                uuid: String::from(VM),
                instance: 1,
                vcpu_time_ns: vec![step * 5_000_000_000],
                memory_actual_bytes: 1 << 30,
                memory_target_bytes: 1 << 30,
                ..VmFigures::default()
            };
            let report = meters
                .metering
                .sample(now_ms, &host, core::slice::from_ref(&vm));
            assert!(report.vm_errors.is_empty());
            meters
                .usage
                .record(
                    now_ms,
                    &[VmUsageSample {
                        identity: &identity,
                        figures: &vm,
                    }],
                )
                .unwrap();
        }
        World {
            api,
            session,
            meters: Rc::new(RefCell::new(meters)),
        }
    }

    fn request(method: Method, target: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (String::from(p), Some(String::from(q))),
            None => (String::from(target), None),
        };
        Request {
            method,
            target: String::from(target),
            path,
            query,
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: String::from(*n),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
            body: BodyKind::None,
            keep_alive: true,
            expect_continue: false,
        }
    }

    impl World {
        fn ask(&mut self, method: Method, target: &str) -> (u16, &'static str, String) {
            self.ask_with(method, target, &[])
        }

        fn ask_with(
            &mut self,
            method: Method,
            target: &str,
            headers: &[(&str, &str)],
        ) -> (u16, &'static str, String) {
            let target = target.replace("SESSION", &self.session);
            let request = request(method, &target, headers);
            let mut access = self.meters.clone();
            let (status, headers, body) =
                answer(&request, &self.api, Some(&mut access), at(HOUR_S + 700));
            let content_type = headers
                .iter()
                .find(|(n, _)| *n == "Content-Type")
                .map_or("", |(_, v)| *v);
            (status, content_type, String::from_utf8(body).unwrap())
        }
    }

    #[test]
    fn paths() {
        for path in [
            "/rrd_updates",
            "/host_rrd",
            "/vm_rrd",
            "/usage",
            "/usage/ack",
        ] {
            assert!(is_metering_path(path));
        }
        assert!(!is_metering_path("/rrd_updates/x"));
        assert!(!is_metering_path("/"));
    }

    #[test]
    fn every_route_needs_a_live_session() {
        let mut w = world();
        for target in [
            "/rrd_updates?start=0",
            "/host_rrd",
            "/vm_rrd?uuid=x",
            "/usage?from=0&to=3600",
        ] {
            let (status, _, body) = w.ask(Method::Get, target);
            assert_eq!(status, 401, "{target}: {body}");
            let (status, _, _) = w.ask(Method::Get, &format!("{target}&session_id=OpaqueRef:x"));
            assert_eq!(status, 401, "{target}");
        }
        // The session in a cookie is as good as in the query.
        let cookie = format!("lang=en; session_id={}", w.session);
        let (status, _, body) = w.ask_with(Method::Get, "/host_rrd", &[("Cookie", &cookie)]);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.starts_with("<?xml") && body.contains("<rrd>"),
            "{body}"
        );
    }

    #[test]
    fn rrd_updates_xml_json_and_nonsense() {
        let mut w = world();
        let start = HOUR_S + 590;
        let (status, content_type, body) = w.ask(
            Method::Get,
            &format!("/rrd_updates?session_id=SESSION&start={start}&cf=AVERAGE&host=true"),
        );
        assert_eq!((status, content_type), (200, "text/xml"), "{body}");
        assert!(
            body.contains("<xport>") && body.contains("<step>5</step>"),
            "{body}"
        );
        assert!(
            body.contains(&format!("AVERAGE:host:{HOST}:cpu0")),
            "{body}"
        );
        assert!(body.contains(&format!("AVERAGE:vm:{VM}:cpu0")), "{body}");
        // JSON by parameter and by Accept header.
        let (status, content_type, json) = w.ask(
            Method::Get,
            &format!("/rrd_updates?session_id=SESSION&start={start}&json=true"),
        );
        assert_eq!((status, content_type), (200, "application/json"));
        assert!(json.starts_with("{\"meta\":{"), "{json}");
        let (_, content_type, _) = w.ask_with(
            Method::Get,
            &format!("/rrd_updates?session_id=SESSION&start={start}"),
            &[("Accept", "application/json, text/xml")],
        );
        assert_eq!(content_type, "application/json");
        let refusals = [
            ("/rrd_updates?session_id=SESSION", 400),
            ("/rrd_updates?session_id=SESSION&start=soon", 400),
            ("/rrd_updates?session_id=SESSION&start=99999999999", 400),
            ("/rrd_updates?session_id=SESSION&start=1", 400),
            ("/rrd_updates?session_id=SESSION&start=0&cf=MEDIAN", 400),
            (
                "/rrd_updates?session_id=SESSION&start=-60&vm_uuid=nope",
                404,
            ),
            ("/vm_rrd?session_id=SESSION", 400),
            ("/vm_rrd?session_id=SESSION&uuid=nope", 404),
            ("/rrd_updates?session_id=SESSION&start=%ZZ", 400),
        ];
        for (target, want) in refusals {
            let (status, content_type, body) = w.ask(Method::Get, target);
            assert_eq!(status, want, "{target}: {body}");
            assert!(content_type.starts_with("text/plain") && body.ends_with('\n'));
        }
        let (status, _, body) = w.ask(
            Method::Get,
            &format!("/vm_rrd?session_id=SESSION&uuid={VM}"),
        );
        assert_eq!(status, 200);
        assert!(body.contains("<name> cpu0 </name>") || body.contains("<name>cpu0</name>"));
        let (status, _, _) = w.ask(Method::Post, "/rrd_updates?session_id=SESSION&start=0");
        assert_eq!(status, 405);
    }

    #[test]
    fn usage_export_and_acknowledgement() {
        let mut w = world();
        let period = format!("from={HOUR_S}&to={}", HOUR_S + 3600);
        // Not yet exported: an acknowledgement is refused.
        let (status, _, body) = w.ask(
            Method::Post,
            &format!("/usage/ack?session_id=SESSION&{period}"),
        );
        assert_eq!(status, 409, "{body}");
        let (status, content_type, csv) =
            w.ask(Method::Get, &format!("/usage?session_id=SESSION&{period}"));
        assert_eq!(
            (status, content_type),
            (200, "text/csv; charset=utf-8"),
            "{csv}"
        );
        let mut lines = csv.split("\r\n");
        assert!(lines
            .next()
            .unwrap()
            .starts_with("vm_uuid,vm_name,tenant,tags,"));
        let row = lines.next().unwrap();
        assert!(
            row.starts_with(&format!("{VM},\"web, \"\"prod\"\"\",acme,tenant=acme,")),
            "{row}"
        );
        // 10 s of one busy vCPU.
        assert!(row.contains(",10.000000,"), "{row}");
        let (status, content_type, json) = w.ask(
            Method::Get,
            &format!("/usage?session_id=SESSION&{period}&format=json"),
        );
        assert_eq!((status, content_type), (200, "application/json"));
        assert!(json.contains("\"vcpu_seconds\":10"), "{json}");
        let (status, _, body) = w.ask(
            Method::Post,
            &format!("/usage/ack?session_id=SESSION&{period}"),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "{\"acknowledged_rows\":1,\"kept_rows\":0}");
        assert_eq!(w.meters.borrow().usage.ledger().row_count(), 0);
        let refusals = [
            (
                Method::Get,
                "/usage?session_id=SESSION&from=0".to_string(),
                400,
            ),
            (
                Method::Get,
                "/usage?session_id=SESSION&from=1&to=3600".to_string(),
                400,
            ),
            (
                Method::Get,
                format!("/usage?session_id=SESSION&{period}&format=xls"),
                400,
            ),
            (
                Method::Get,
                format!("/usage/ack?session_id=SESSION&{period}"),
                405,
            ),
            (
                Method::Put,
                format!("/usage?session_id=SESSION&{period}"),
                405,
            ),
        ];
        for (method, target, want) in refusals {
            let (status, _, body) = w.ask(method, &target);
            assert_eq!(status, want, "{target}: {body}");
        }
    }

    #[test]
    fn without_metering_the_routes_are_404() {
        let w = world();
        let target = format!("/host_rrd?session_id={}", w.session);
        let (status, _, _) = answer(
            &request(Method::Get, &target, &[]),
            &w.api,
            None,
            at(HOUR_S),
        );
        assert_eq!(status, 404);
    }
}
