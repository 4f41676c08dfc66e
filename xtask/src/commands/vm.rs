//! `cargo xtask vm demo [--api-port PORT]`: a Linux guest on the Keel that `cargo xtask run`
//! started, made through the XenAPI as any client would make it (docs/guests.md).
//!
//! It logs in as root (the password `cargo xtask run` keeps in target/keel/root-password),
//! uploads Debian's kernel and the guest initramfs ([`keel_tests::guest`]) as VDIs with
//! `PUT /import_raw_vdi`, clones the built-in PVH template into a VM named `demo` pointed at
//! them (`vdi:<uuid>`), starts it and prints its console (`GET /console` on the management
//! port, the console's `location`) until the guest says it is ready. A `demo` VM that exists
//! already is started again (or, running, just shown). `cargo xtask console demo` attaches.
//!
//! The XenAPI session here ([`Session`]) also serves `bench vm`, which makes its guests the
//! same way.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use keel_console::split_location;
use keel_tests::credentials::dev_password_path;
use keel_tests::guest::{self, GUEST_READY};

use crate::cli::{CliError, DEFAULT_API_PORT};
use crate::error::XtaskError;
use crate::load::{self, xmlrpc_call, Param};

/// The built-in template every guest is cloned from.
pub const TEMPLATE: &str = "Keel Linux PVH (direct boot)";
/// The demo VM's name-label.
pub const DEMO_VM: &str = "demo";
/// The demo guest's memory: Debian's xz kernel needs about 106 MiB to unpack and boot.
pub const DEMO_MEMORY_MIB: u64 = 128;
/// From `VM.start` to the guest's ready line under nested TCG (measured: 30–60 s).
const GUEST_BOOT_DEADLINE: Duration = Duration::from_secs(600);
/// Longest wait for one call; `VM.start` builds a domain (seconds under TCG).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;

/// Options of `cargo xtask vm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmCommand {
    /// `vm demo`: make (or reuse) the `demo` VM, start it, show its console.
    Demo { api_port: u16 },
}

/// Parses the words after `vm`.
pub fn parse(words: &[String]) -> Result<VmCommand, CliError> {
    let mut words = words.iter();
    match words.next().map(String::as_str) {
        Some("demo") => {}
        Some(other) => return Err(CliError::UnknownCommand(format!("vm {other}"))),
        None => {
            return Err(CliError::InvalidValue {
                option: "vm".into(),
                value: String::new(),
                expected: "a subcommand: demo",
            })
        }
    }
    let mut api_port = DEFAULT_API_PORT;
    while let Some(word) = words.next() {
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (word.as_str(), None),
        };
        match name {
            "--api-port" => {
                let value = match inline {
                    Some(value) => value,
                    None => words
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError::MissingValue {
                            option: name.into(),
                        })?,
                };
                api_port = match value.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: name.into(),
                            value,
                            expected: "a port number from 1 to 65535",
                        })
                    }
                };
            }
            _ => {
                return Err(CliError::UnknownOption {
                    command: "vm demo",
                    option: word.clone(),
                })
            }
        }
    }
    Ok(VmCommand::Demo { api_port })
}

/// A failed XenAPI call, typed so that callers can tell "Keel is not there" from "Keel said
/// no" (and which no).
#[derive(Debug)]
pub enum CallError {
    /// Nothing answered on 127.0.0.1:port (or the answer never came).
    Unreachable {
        method: String,
        port: u16,
        error: std::io::Error,
    },
    /// An HTTP answer other than 200.
    Http { method: String, status: u16 },
    /// xapi's `Failure` with its `ErrorDescription` (code first).
    Failure {
        method: String,
        description: Vec<String>,
    },
}

impl CallError {
    /// The XenAPI error code of a `Failure`.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Failure { description, .. } => description.first().map(String::as_str),
            _ => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable {
                method,
                port,
                error,
            } => write!(
                f,
                "{method}: no answer on 127.0.0.1:{port} ({error}); is Keel running? \
                 Start it with `cargo xtask run` and wait for `keel: ready`"
            ),
            CallError::Http { method, status } => write!(f, "{method}: HTTP {status}"),
            CallError::Failure {
                method,
                description,
            } => write!(f, "{method} failed: {}", description.join(" ")),
        }
    }
}

impl From<CallError> for XtaskError {
    fn from(error: CallError) -> Self {
        XtaskError::Io {
            what: "XenAPI".into(),
            error: std::io::Error::other(error.to_string()),
        }
    }
}

fn failed(what: impl Into<String>, why: impl Into<String>) -> XtaskError {
    XtaskError::Io {
        what: what.into(),
        error: std::io::Error::other(why.into()),
    }
}

/// Text with XML's entities for `<`, `>` and `&` turned back into characters.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The strings of a `Failure` answer's `ErrorDescription` array.
pub fn error_description(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let Some((_, after)) = text.split_once("<name>ErrorDescription</name>") else {
        return Vec::new();
    };
    let array = after.split("</array>").next().unwrap_or(after);
    array
        .split("<value>")
        .skip(2) // before the array, then the array's own <value>
        .map(|item| {
            let item = item.strip_prefix("<string>").unwrap_or(item);
            unescape(item.split('<').next().unwrap_or(""))
        })
        .collect()
}

/// Every `OpaqueRef:…` in an answer, in order.
pub fn all_refs(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("OpaqueRef:")
        .skip(1)
        .map(|rest| format!("OpaqueRef:{}", rest.split('<').next().unwrap_or("")))
        .collect()
}

/// One XML-RPC call on 127.0.0.1:`port`.
pub fn call(port: u16, method: &str, params: &[Param<'_>]) -> Result<Vec<u8>, CallError> {
    match load::one_shot(port, &xmlrpc_call(method, params), CALL_TIMEOUT) {
        Ok((200, body)) if load::succeeded(&body) => Ok(body),
        Ok((200, body)) => Err(CallError::Failure {
            method: method.into(),
            description: error_description(&body),
        }),
        Ok((status, _)) => Err(CallError::Http {
            method: method.into(),
            status,
        }),
        Err(error) => Err(CallError::Unreachable {
            method: method.into(),
            port,
            error,
        }),
    }
}

/// How many times a read is sent when the connection fails.
const READ_ATTEMPTS: u32 = 3;

/// Whether `method` only reads (`VM.get_domid`, `host.query_data_source`), so that sending
/// it again is harmless.
fn is_read(method: &str) -> bool {
    method
        .split_once('.')
        .is_some_and(|(_, call)| call.starts_with("get_") || call.starts_with("query_"))
}

/// A logged-in root session on the management API forwarded to 127.0.0.1:`port`.
pub struct Session {
    pub port: u16,
    pub id: String,
}

impl Session {
    pub fn login(port: u16, password: &str, originator: &str) -> Result<Session, CallError> {
        let body = call(
            port,
            "session.login_with_password",
            &[
                Param::Str("root"),
                Param::Str(password),
                Param::Str("1.0"),
                Param::Str(originator),
            ],
        )?;
        let id = load::first_ref(&body).ok_or_else(|| CallError::Failure {
            method: "session.login_with_password".into(),
            description: vec!["no session in the answer".into()],
        })?;
        Ok(Session { port, id })
    }

    /// `method(session, params…)`. Reads are tried [`READ_ATTEMPTS`] times when the
    /// connection fails: QEMU's user networking resets a connection now and then when the
    /// machine is loaded, and a read can be repeated where a `VM.start` cannot.
    pub fn call(&self, method: &str, params: &[Param<'_>]) -> Result<Vec<u8>, CallError> {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(Param::Str(&self.id));
        all.extend_from_slice(params);
        let attempts = if is_read(method) { READ_ATTEMPTS } else { 1 };
        let mut attempt = 1;
        loop {
            match call(self.port, method, &all) {
                Err(CallError::Unreachable { .. }) if attempt < attempts => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                answer => return answer,
            }
        }
    }

    /// `method(session, strings…)` answering a string (or a number, as a string).
    pub fn value(&self, method: &str, params: &[&str]) -> Result<String, XtaskError> {
        let params: Vec<Param<'_>> = params.iter().map(|p| Param::Str(p)).collect();
        let body = self.call(method, &params)?;
        load::member_string(&body, "Value")
            .map(|v| unescape(&v))
            .ok_or_else(|| failed(method, "no value in the answer"))
    }

    /// `method(session, strings…)` answering one reference.
    pub fn reference(&self, method: &str, params: &[&str]) -> Result<String, XtaskError> {
        let params: Vec<Param<'_>> = params.iter().map(|p| Param::Str(p)).collect();
        let body = self.call(method, &params)?;
        load::first_ref(&body).ok_or_else(|| failed(method, "no reference in the answer"))
    }

    /// The VMs (templates or not, as asked) with this name-label.
    pub fn vms_named(&self, name: &str, templates: bool) -> Result<Vec<String>, XtaskError> {
        let body = self.call("VM.get_by_name_label", &[Param::Str(name)])?;
        let mut found = Vec::new();
        for vm in all_refs(&body) {
            let template = self.call("VM.get_is_a_template", &[Param::Str(&vm)])?;
            if String::from_utf8_lossy(&template).contains("<boolean>1</boolean>") == templates {
                found.push(vm);
            }
        }
        Ok(found)
    }

    /// The first SR (where `cargo xtask run`'s disk is).
    pub fn first_sr(&self) -> Result<String, XtaskError> {
        self.reference("SR.get_all", &[]).map_err(|_| {
            failed(
                "SR.get_all",
                "Keel has no SR: give `cargo xtask run` a disk",
            )
        })
    }

    /// Uploads `path` as a new VDI on `sr` (size rounded up to a MiB, zero-padded); returns
    /// the VDI's UUID.
    pub fn upload(&self, sr: &str, path: &Path, name: &str) -> Result<String, XtaskError> {
        let data = std::fs::read(path).map_err(|error| XtaskError::Io {
            what: format!("reading {}", path.display()),
            error,
        })?;
        let size = (data.len() as u64).div_ceil(MIB) * MIB;
        let size_text = size.to_string();
        let body = self.call(
            "VDI.create",
            &[Param::Struct(&[
                ("SR", Param::Str(sr)),
                ("name_label", Param::Str(name)),
                ("name_description", Param::Str("")),
                ("virtual_size", Param::Str(&size_text)),
                ("type", Param::Str("user")),
                ("sharable", Param::Bool(false)),
                ("read_only", Param::Bool(false)),
                ("other_config", Param::Struct(&[])),
                ("xenstore_data", Param::Struct(&[])),
                ("sm_config", Param::Struct(&[])),
                ("tags", Param::Strings(&[])),
            ])],
        )?;
        let vdi = load::first_ref(&body).ok_or_else(|| failed("VDI.create", "no reference"))?;
        let mut put = format!(
            "PUT /import_raw_vdi?session_id={}&vdi={vdi} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Length: {size}\r\n\r\n",
            self.id
        )
        .into_bytes();
        put.extend_from_slice(&data);
        put.resize(put.len() + (size as usize - data.len()), 0);
        match load::one_shot(self.port, &put, CALL_TIMEOUT) {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                return Err(failed(
                    format!("uploading {}", path.display()),
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                ))
            }
            Err(error) => {
                return Err(XtaskError::Io {
                    what: format!("uploading {}", path.display()),
                    error,
                })
            }
        }
        self.value("VDI.get_uuid", &[&vdi])
    }

    /// Uploads the guest kernel and initramfs; returns their VDI UUIDs.
    pub fn upload_guest_assets(&self) -> Result<(String, String), XtaskError> {
        let sr = self.first_sr()?;
        let kernel = self.upload(&sr, &guest::kernel()?, "guest kernel (Debian vmlinuz)")?;
        let ramdisk = self.upload(&sr, &guest::initramfs()?, "guest initramfs")?;
        Ok((kernel, ramdisk))
    }

    /// Clones [`TEMPLATE`] into a VM named `name` booting the uploaded kernel and ramdisk
    /// with `keel_guest=action`, with `memory_mib` of memory. Returns the VM's reference.
    pub fn create_guest(
        &self,
        name: &str,
        (kernel, ramdisk): (&str, &str),
        action: &str,
        memory_mib: u64,
    ) -> Result<String, XtaskError> {
        let template = match self.vms_named(TEMPLATE, true)?.as_slice() {
            [template] => template.clone(),
            other => {
                return Err(failed(
                    "the guest template",
                    format!("{} templates named {TEMPLATE:?}", other.len()),
                ))
            }
        };
        let vm = self.reference("VM.clone", &[&template, name])?;
        self.call(
            "VM.set_PV_kernel",
            &[Param::Str(&vm), Param::Str(&format!("vdi:{kernel}"))],
        )?;
        self.call(
            "VM.set_PV_ramdisk",
            &[Param::Str(&vm), Param::Str(&format!("vdi:{ramdisk}"))],
        )?;
        self.call(
            "VM.set_PV_args",
            &[Param::Str(&vm), Param::Str(&guest::cmdline(action))],
        )?;
        let (min, max) = ((64 * MIB).to_string(), (memory_mib * MIB).to_string());
        self.call(
            "VM.set_memory_limits",
            &[
                Param::Str(&vm),
                Param::Str(&min),
                Param::Str(&max),
                Param::Str(&max),
                Param::Str(&max),
            ],
        )?;
        self.call("VM.provision", &[Param::Str(&vm)])?;
        // A clone of a template is one until told otherwise.
        self.call(
            "VM.set_is_a_template",
            &[Param::Str(&vm), Param::Bool(false)],
        )?;
        Ok(vm)
    }

    /// `VM.start(vm, false, false)`.
    pub fn start(&self, vm: &str) -> Result<(), CallError> {
        self.call(
            "VM.start",
            &[Param::Str(vm), Param::Bool(false), Param::Bool(false)],
        )
        .map(|_| ())
    }

    /// The console output so far of a running VM (`GET` of its console's location on the
    /// management port); `None` while it has no console yet.
    pub fn console_output(&self, vm: &str) -> Result<Option<Vec<u8>>, XtaskError> {
        let body = self.call("VM.get_consoles", &[Param::Str(vm)])?;
        let Some(console) = load::first_ref(&body) else {
            return Ok(None);
        };
        let location = self.value("console.get_location", &[&console])?;
        let (_, target) = split_location(&location)
            .map_err(|e| failed("the console location", format!("{location:?}: {e:?}")))?;
        let request = format!(
            "GET {target}&session_id={} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            self.id
        );
        match get_to_close(self.port, request.as_bytes()) {
            Ok((200, body)) => Ok(Some(body)),
            // The console is attached a moment after the domain exists.
            Ok((404, _)) => Ok(None),
            Ok((status, _)) => Err(failed("GET /console", format!("HTTP {status}"))),
            Err(error) => Err(XtaskError::Io {
                what: "GET /console".into(),
                error,
            }),
        }
    }
}

/// Sends `request` and reads the answer until the server closes: the console history
/// comes without a `Content-Length`. Returns the status and the body.
fn get_to_close(port: u16, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(split_answer(&answer))
}

/// An HTTP answer's status and body (all that follows the head, cut to `Content-Length`
/// when there is one).
fn split_answer(answer: &[u8]) -> (u16, Vec<u8>) {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = &answer[head_end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return (status, dechunk(body));
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(body.len(), |n| n.min(body.len()));
    (status, body[..length].to_vec())
}

/// The data of a chunked body (`SIZE\r\nDATA\r\n` … `0\r\n\r\n`); stops at anything
/// malformed with what came before.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let start = line_end + 2;
        match size {
            Some(n) if n > 0 && start + n <= body.len() => {
                out.extend_from_slice(&body[start..start + n]);
                body = body.get(start + n + 2..).unwrap_or(&[]);
            }
            _ => break,
        }
    }
    out
}

/// What of `now` (the console's output so far) was not in `seen` (the output before).
/// Keel keeps a bounded history: once it is full, old bytes drop off the front, so `now`
/// is a suffix of `seen` followed by the new bytes; the first (longest) such suffix wins.
pub fn fresh_output<'a>(seen: &[u8], now: &'a [u8]) -> &'a [u8] {
    (0..seen.len())
        .map(|dropped| &seen[dropped..])
        .find(|kept| now.starts_with(kept))
        .map_or(now, |kept| &now[kept.len()..])
}

/// The root password `cargo xtask run` wrote.
fn dev_password() -> Result<String, XtaskError> {
    let path = dev_password_path();
    std::fs::read_to_string(&path)
        .map(|p| p.trim().to_string())
        .map_err(|error| XtaskError::Io {
            what: format!(
                "reading {} (written by `cargo xtask run`; start Keel with it first)",
                path.display()
            ),
            error,
        })
}

/// The message for a `VM.start` that Keel refused.
fn start_refused(error: CallError) -> XtaskError {
    let no_toolstack = error.code() == Some("OPERATION_NOT_ALLOWED")
        && matches!(&error, CallError::Failure { description, .. }
            if description.iter().any(|d| d.contains("no toolstack")));
    if no_toolstack {
        failed(
            "VM.start",
            "this Keel runs without Xen, so it runs no guests: stop it (Ctrl-A X) and \
             start it again with `cargo xtask run` (Xen is the default; no --no-xen)",
        )
    } else {
        error.into()
    }
}

pub fn run(words: &[String]) -> Result<ExitCode, XtaskError> {
    let VmCommand::Demo { api_port } = parse(words)?;
    let password = dev_password()?;
    let session = Session::login(api_port, &password, "xtask-vm-demo")?;
    let vm = match session.vms_named(DEMO_VM, false)?.as_slice() {
        [vm] => {
            eprintln!("[reusing the VM {DEMO_VM:?}]");
            vm.clone()
        }
        [] => {
            eprintln!("[uploading Debian's kernel and the guest initramfs as VDIs]");
            let (kernel, ramdisk) = session.upload_guest_assets()?;
            eprintln!("[cloning {TEMPLATE:?} into {DEMO_VM:?}]");
            session.create_guest(DEMO_VM, (&kernel, &ramdisk), "idle", DEMO_MEMORY_MIB)?
        }
        many => {
            return Err(failed(
                DEMO_VM,
                format!(
                    "{} VMs have this name-label; destroy all but one",
                    many.len()
                ),
            ))
        }
    };
    let power = session.value("VM.get_power_state", &[&vm])?;
    match power.as_str() {
        "Halted" => {
            eprintln!("[VM.start {DEMO_VM}]");
            let started = Instant::now();
            session.start(&vm).map_err(start_refused)?;
            eprintln!(
                "[running as domain {} after {:.1} s]",
                session.value("VM.get_domid", &[&vm])?,
                started.elapsed().as_secs_f64()
            );
        }
        "Running" => eprintln!("[{DEMO_VM} is running already]"),
        other => {
            return Err(failed(
                DEMO_VM,
                format!("the VM is {other}; `cargo xtask console {DEMO_VM}` or restart it"),
            ))
        }
    }
    stream_until_ready(&session, &vm)?;
    eprintln!("\n[the guest is ready; attach to its console with: cargo xtask console {DEMO_VM}]");
    if api_port != DEFAULT_API_PORT {
        eprintln!("[(with --api-port {api_port})]");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the console as it grows until it holds [`GUEST_READY`].
fn stream_until_ready(session: &Session, vm: &str) -> Result<(), XtaskError> {
    let deadline = Instant::now() + GUEST_BOOT_DEADLINE;
    let mut seen = Vec::new();
    let mut stdout = std::io::stdout();
    loop {
        if let Some(now) = session.console_output(vm)? {
            let fresh = fresh_output(&seen, &now);
            stdout
                .write_all(fresh)
                .and_then(|()| stdout.flush())
                .map_err(|error| XtaskError::Io {
                    what: "stdout".into(),
                    error,
                })?;
            seen = now;
            if String::from_utf8_lossy(&seen).contains(GUEST_READY) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(failed(
                DEMO_VM,
                format!(
                    "no {GUEST_READY:?} on the console after {} s",
                    GUEST_BOOT_DEADLINE.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn demo_defaults_to_runs_api_port_and_takes_another() {
        assert_eq!(
            parse(&words("demo")),
            Ok(VmCommand::Demo {
                api_port: DEFAULT_API_PORT
            })
        );
        assert_eq!(
            parse(&words("demo --api-port 9000")),
            Ok(VmCommand::Demo { api_port: 9000 })
        );
        assert_eq!(
            parse(&words("demo --api-port=9001")),
            Ok(VmCommand::Demo { api_port: 9001 })
        );
        assert_eq!(
            crate::cli::parse(["vm", "demo", "--api-port", "9002"]),
            Ok(Command::Vm(words("demo --api-port 9002")))
        );
    }

    #[test]
    fn vm_refuses_mistakes() {
        assert!(matches!(
            parse(&words("")),
            Err(CliError::InvalidValue { .. })
        ));
        assert_eq!(
            parse(&words("launch")),
            Err(CliError::UnknownCommand("vm launch".into()))
        );
        assert_eq!(
            parse(&words("demo --api-port")),
            Err(CliError::MissingValue {
                option: "--api-port".into()
            })
        );
        for bad in ["0", "65536", "x"] {
            assert!(matches!(
                parse(&words(&format!("demo --api-port {bad}"))),
                Err(CliError::InvalidValue { .. })
            ));
        }
        assert_eq!(
            parse(&words("demo extra")),
            Err(CliError::UnknownOption {
                command: "vm demo",
                option: "extra".into()
            })
        );
    }

    #[test]
    fn failures_are_read_code_first() {
        let body = b"<methodResponse><params><param><value><struct>\
            <member><name>Status</name><value>Failure</value></member>\
            <member><name>ErrorDescription</name><value><array><data>\
            <value>OPERATION_NOT_ALLOWED</value>\
            <value><string>this host runs no guests (no toolstack) &amp; &lt;x&gt;</string></value>\
            </data></array></value></member></struct></value></param></params></methodResponse>";
        assert_eq!(
            error_description(body),
            [
                "OPERATION_NOT_ALLOWED",
                "this host runs no guests (no toolstack) & <x>"
            ]
        );
        assert!(error_description(b"<struct/>").is_empty());
        let error = CallError::Failure {
            method: "VM.start".into(),
            description: error_description(body),
        };
        assert_eq!(error.code(), Some("OPERATION_NOT_ALLOWED"));
        let shown = start_refused(error).to_string();
        assert!(shown.contains("without Xen"), "{shown}");
        let other = start_refused(CallError::Failure {
            method: "VM.start".into(),
            description: vec!["HOST_NOT_ENOUGH_FREE_MEMORY".into()],
        });
        assert!(other.to_string().contains("HOST_NOT_ENOUGH_FREE_MEMORY"));
    }

    #[test]
    fn an_absent_keel_is_named_with_the_way_to_start_it() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let Err(error) = Session::login(port, "pw", "test") else {
            panic!("a login with nothing listening succeeded");
        };
        assert!(matches!(error, CallError::Unreachable { .. }));
        assert!(error.to_string().contains("cargo xtask run"), "{error}");
    }

    #[test]
    fn console_output_is_printed_once_even_when_old_bytes_drop_off() {
        assert_eq!(fresh_output(b"", b"abc"), b"abc");
        assert_eq!(fresh_output(b"abc", b"abcdef"), b"def");
        assert_eq!(fresh_output(b"abcdef", b"abcdef"), b"");
        // The history dropped "ab" off its front.
        assert_eq!(fresh_output(b"abcdef", b"cdefgh"), b"gh");
        // Nothing in common: all of it is new.
        assert_eq!(fresh_output(b"xyz", b"abc"), b"abc");
    }

    #[test]
    fn console_answers_are_read_with_or_without_a_length() {
        assert_eq!(
            split_answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nboot\r\nready"),
            (200, b"boot\r\nready".to_vec())
        );
        assert_eq!(
            split_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nnoXX"),
            (404, b"no".to_vec())
        );
        assert_eq!(split_answer(b"garbage"), (0, Vec::new()));
        assert_eq!(
            split_answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nboot \r\nb\r\nkeel-guest!\r\n0\r\n\r\n"
            ),
            (200, b"boot keel-guest!".to_vec())
        );
    }

    #[test]
    fn only_reads_are_sent_again() {
        assert!(is_read("VM.get_domid"));
        assert!(is_read("host.query_data_source"));
        assert!(!is_read("VM.start"));
        assert!(!is_read("VM.clone"));
        assert!(!is_read("get_domid"));
    }

    #[test]
    fn refs_are_read_from_an_answer() {
        let body = b"<value><array><data><value>OpaqueRef:a-1</value>\
                     <value>OpaqueRef:b-2</value></data></array></value>";
        assert_eq!(all_refs(body), ["OpaqueRef:a-1", "OpaqueRef:b-2"]);
    }
}
