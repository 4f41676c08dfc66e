//! `cargo xtask console [--api-port PORT] VM`: attaches this terminal to a guest's console
//! on a Keel started by `cargo xtask run` (docs/guests.md, "Console").
//!
//! It logs in as root (the password `cargo xtask run` keeps in target/keel/root-password),
//! finds the VM by name-label or UUID, reads its console's `location`, and sends the
//! `CONNECT` to the management port forwarded on 127.0.0.1 (the location names Keel's own
//! address, which the host may not reach; the path and query are what matter). Then the
//! terminal goes raw and bytes are copied both ways until `Ctrl-]` (as `xl console`), the
//! guest's domain going away, or the end of a non-terminal stdin.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::Duration;

use keel_console::{connect_request, parse_connect_response, split_location, ConnectResponse};
use keel_tests::credentials::dev_password_path;

use crate::cli::{CliError, DEFAULT_API_PORT};
use crate::error::XtaskError;
use crate::load::{self, xmlrpc_request};

/// `Ctrl-]`: detaches.
const DETACH: u8 = 0x1d;

/// Options of `cargo xtask console`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// The VM's name-label or UUID.
    pub vm: String,
    /// Host port forwarded to the management API (as `cargo xtask run --api-port`).
    pub api_port: u16,
}

/// Parses the words after `console`.
pub fn parse(words: &[String]) -> Result<ConsoleOptions, CliError> {
    let mut api_port = DEFAULT_API_PORT;
    let mut vm = None;
    let mut words = words.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--api-port" => {
                let value = words.next().ok_or_else(|| CliError::MissingValue {
                    option: word.clone(),
                })?;
                api_port = match value.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => {
                        return Err(CliError::InvalidValue {
                            option: word.clone(),
                            value: value.clone(),
                            expected: "a port number from 1 to 65535",
                        })
                    }
                };
            }
            option if option.starts_with("--") => {
                return Err(CliError::UnknownOption {
                    command: "console",
                    option: word.clone(),
                })
            }
            _ if vm.is_some() => {
                return Err(CliError::InvalidValue {
                    option: "console".into(),
                    value: word.clone(),
                    expected: "one VM name-label or UUID",
                })
            }
            _ => vm = Some(word.clone()),
        }
    }
    let vm = vm.filter(|v| !v.is_empty()).ok_or(CliError::InvalidValue {
        option: "console".into(),
        value: String::new(),
        expected: "a VM name-label or UUID",
    })?;
    Ok(ConsoleOptions { vm, api_port })
}

fn failed(what: &str, why: impl Into<String>) -> XtaskError {
    XtaskError::Io {
        what: what.into(),
        error: std::io::Error::other(why.into()),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> XtaskError {
    move |error| XtaskError::Io {
        what: what.into(),
        error,
    }
}

/// Whether `text` is a UUID (8-4-4-4-12 hexadecimal digits).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Every `OpaqueRef:…` in an XML-RPC answer, in order.
fn all_refs(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.split("OpaqueRef:")
        .skip(1)
        .map(|rest| format!("OpaqueRef:{}", rest.split('<').next().unwrap_or("")))
        .collect()
}

/// One XML-RPC call that must succeed.
fn call(port: u16, method: &str, params: &[&str]) -> Result<Vec<u8>, XtaskError> {
    match load::one_shot(
        port,
        &xmlrpc_request(method, params),
        Duration::from_secs(30),
    ) {
        Ok((200, body)) if load::succeeded(&body) => Ok(body),
        Ok((status, body)) => Err(failed(
            method,
            format!(
                "HTTP {status}: {}",
                load::member_string(&body, "ErrorDescription")
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect())
            ),
        )),
        Err(error) => Err(XtaskError::Io {
            what: format!("{method} on 127.0.0.1:{port} (is Keel running?)"),
            error,
        }),
    }
}

/// Logs in, finds the VM and returns the session and its console's location.
fn find_console(options: &ConsoleOptions) -> Result<(String, String), XtaskError> {
    let port = options.api_port;
    let password_path = dev_password_path();
    let password = std::fs::read_to_string(&password_path).map_err(|error| XtaskError::Io {
        what: format!(
            "reading {} (written by `cargo xtask run`)",
            password_path.display()
        ),
        error,
    })?;
    let body = call(
        port,
        "session.login_with_password",
        &["root", password.trim(), "1.0", "xtask-console"],
    )?;
    let session =
        load::first_ref(&body).ok_or_else(|| failed("login", "no session in the answer"))?;

    let vm = if is_uuid(&options.vm) {
        let body = call(port, "VM.get_by_uuid", &[&session, &options.vm])?;
        load::first_ref(&body).ok_or_else(|| failed("VM.get_by_uuid", "no reference"))?
    } else {
        let body = call(port, "VM.get_by_name_label", &[&session, &options.vm])?;
        let mut vms = Vec::new();
        for vm in all_refs(&body) {
            let template = call(port, "VM.get_is_a_template", &[&session, &vm])?;
            if !String::from_utf8_lossy(&template).contains("<boolean>1</boolean>") {
                vms.push(vm);
            }
        }
        match vms.as_slice() {
            [vm] => vm.clone(),
            [] => return Err(failed(&options.vm, "no VM has this name-label")),
            _ => {
                return Err(failed(
                    &options.vm,
                    format!("{} VMs have this name-label: use a UUID", vms.len()),
                ))
            }
        }
    };
    let body = call(port, "VM.get_consoles", &[&session, &vm])?;
    let console = load::first_ref(&body)
        .ok_or_else(|| failed(&options.vm, "the VM has no console (is it running?)"))?;
    let body = call(port, "console.get_location", &[&session, &console])?;
    let location = load::member_string(&body, "Value")
        .ok_or_else(|| failed("console.get_location", "no location in the answer"))?;
    Ok((session, location))
}

/// Sends the `CONNECT` and reads the answer; returns the stream and the console bytes that
/// came with the answer.
fn connect(port: u16, location: &str, session: &str) -> Result<(TcpStream, Vec<u8>), XtaskError> {
    let request = connect_request(location, session)
        .map_err(|e| failed("the console location", format!("{location:?}: {e:?}")))?;
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(io("connecting to the console"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(io("sending the CONNECT"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match parse_connect_response(&answer) {
            ConnectResponse::Incomplete => {}
            ConnectResponse::Accepted { head_len } => {
                let early = answer.split_off(head_len);
                return Ok((stream, early));
            }
            ConnectResponse::Refused { status } => {
                let why = match status {
                    401 => "the session was refused (401)",
                    404 => "no such console, or the VM is not running (404)",
                    _ => "the server refused",
                };
                return Err(failed("CONNECT", format!("{why}: HTTP {status}")));
            }
            ConnectResponse::Malformed => {
                return Err(failed("CONNECT", "the answer is not HTTP"));
            }
        }
        let n = stream
            .read(&mut buf)
            .map_err(io("reading the CONNECT answer"))?;
        if n == 0 {
            return Err(failed("CONNECT", "the server closed without answering"));
        }
        answer.extend_from_slice(&buf[..n]);
    }
}

/// The terminal in raw mode while this lives; restored on drop (also on a panic).
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; `None` when it is not (a pipe, a file).
    fn enable() -> Option<RawTerminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `saved` is a valid place for one termios, which tcgetattr fills on success.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: tcgetattr succeeded, so `saved` is initialised.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only changes its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios for this descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: `saved` is the termios tcgetattr returned for this descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &self.saved) };
    }
}

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Detached,
    /// The server closed: the guest's domain went away (or Keel stopped).
    ServerClosed,
    /// stdin ended (not a terminal) and the server closed after taking it all.
    InputClosed,
}

/// What to send of `typed`: the bytes before `Ctrl-]`, and whether it was typed.
fn split_detach(typed: &[u8]) -> (&[u8], bool) {
    match typed.iter().position(|&b| b == DETACH) {
        Some(at) => (&typed[..at], true),
        None => (typed, false),
    }
}

/// Copies stdin to the console and the console to stdout until one side ends.
fn copy_both_ways(mut stream: TcpStream) -> Result<End, XtaskError> {
    let stdin_fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("stdin"))?;
    // Unbuffered reads of what poll says is there.
    let mut stdin = File::from(stdin_fd);
    let mut stdout = std::io::stdout().lock();
    let mut stdin_open = true;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if stdin_open { stdin.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two initialised pollfd that outlives the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("poll")(error));
        }
        if fds[1].revents != 0 {
            let n = stream.read(&mut buf).map_err(io("reading the console"))?;
            if n == 0 {
                return Ok(if stdin_open {
                    End::ServerClosed
                } else {
                    End::InputClosed
                });
            }
            stdout.write_all(&buf[..n]).map_err(io("stdout"))?;
            stdout.flush().map_err(io("stdout"))?;
        }
        if stdin_open && fds[0].revents != 0 {
            let n = stdin.read(&mut buf).map_err(io("stdin"))?;
            if n == 0 {
                // The server closes once it has handed all of it to the guest.
                stdin_open = false;
                stream
                    .shutdown(Shutdown::Write)
                    .map_err(io("closing the console's input"))?;
                continue;
            }
            let (send, detach) = split_detach(&buf[..n]);
            stream
                .write_all(send)
                .map_err(io("writing to the console"))?;
            if detach {
                return Ok(End::Detached);
            }
        }
    }
}

pub fn run(words: &[String]) -> Result<ExitCode, XtaskError> {
    let options = parse(words)?;
    let (session, location) = find_console(&options)?;
    let (_, target) = split_location(&location)
        .map_err(|e| failed("the console location", format!("{location:?}: {e:?}")))?;
    let (stream, early) = connect(options.api_port, &location, &session)?;
    eprintln!("[console of {} ({target}); Ctrl-] detaches]", options.vm);
    let ended = {
        let _raw = RawTerminal::enable();
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&early).map_err(io("stdout"))?;
        stdout.flush().map_err(io("stdout"))?;
        drop(stdout);
        copy_both_ways(stream)?
    };
    match ended {
        End::Detached => eprintln!("\n[detached]"),
        End::ServerClosed => eprintln!("\n[the console closed: the VM's domain went away]"),
        End::InputClosed => eprintln!("\n[input ended]"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_vm_and_the_port() {
        assert_eq!(
            parse(&words("debian")),
            Ok(ConsoleOptions {
                vm: "debian".into(),
                api_port: DEFAULT_API_PORT
            })
        );
        assert_eq!(
            parse(&words("--api-port 9000 debian")),
            Ok(ConsoleOptions {
                vm: "debian".into(),
                api_port: 9000
            })
        );
        assert_eq!(
            parse(&words("debian --api-port 9000")).map(|o| o.api_port),
            Ok(9000)
        );
    }

    #[test]
    fn refuses_mistakes() {
        assert!(matches!(
            parse(&words("")),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&words("a b")),
            Err(CliError::InvalidValue { value, .. }) if value == "b"
        ));
        assert_eq!(
            parse(&words("vm --api-port")),
            Err(CliError::MissingValue {
                option: "--api-port".into()
            })
        );
        for bad in ["0", "65536", "x"] {
            assert!(matches!(
                parse(&words(&format!("vm --api-port {bad}"))),
                Err(CliError::InvalidValue { .. })
            ));
        }
        assert_eq!(
            parse(&words("--raw vm")),
            Err(CliError::UnknownOption {
                command: "console",
                option: "--raw".into()
            })
        );
    }

    #[test]
    fn uuids_are_told_from_names() {
        assert!(is_uuid("0b6c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c4"));
        assert!(!is_uuid("0b6c2d1e-3f4a-4b5c-8d6e-7f8091a2b3c"));
        assert!(!is_uuid("0b6c2d1e_3f4a-4b5c-8d6e-7f8091a2b3c4"));
        assert!(!is_uuid("debian"));
    }

    #[test]
    fn ctrl_close_bracket_detaches_after_what_precedes_it() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ls\x1d\r"), (&b"ls"[..], true));
        assert_eq!(split_detach(b"\x1d"), (&b""[..], true));
    }

    /// A one-connection server that reads the request head and answers `answer`.
    fn server(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = peer.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            peer.write_all(answer).unwrap();
            request
        });
        (port, handle)
    }

    #[test]
    fn connect_sends_the_request_and_keeps_early_console_bytes() {
        let (port, server) = server(b"HTTP/1.1 200 OK\r\n\r\nlogin: ");
        let location = "http://10.0.2.15/console?ref=OpaqueRef:c";
        let Ok((mut stream, early)) = connect(port, location, "OpaqueRef:s") else {
            panic!("the CONNECT was refused");
        };
        let request = server.join().unwrap();
        assert_eq!(
            request,
            b"CONNECT /console?ref=OpaqueRef:c&session_id=OpaqueRef:s HTTP/1.1\r\n\
              Host: 10.0.2.15\r\n\r\n"
        );
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert_eq!([early, rest].concat(), b"login: ");
    }

    #[test]
    fn connect_reports_a_refusal() {
        let (port, server) = server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let Err(error) = connect(port, "http://h/console?ref=x", "s") else {
            panic!("a 404 was taken for a console");
        };
        server.join().unwrap();
        assert!(error.to_string().contains("404"), "{error}");
    }

    #[test]
    fn refs_are_read_from_an_answer() {
        let body = b"<value><array><data><value>OpaqueRef:a-1</value>\
                     <value>OpaqueRef:b-2</value></data></array></value>";
        assert_eq!(all_refs(body), ["OpaqueRef:a-1", "OpaqueRef:b-2"]);
    }
}
