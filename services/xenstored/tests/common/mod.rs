//! Test helpers: a store laid out as Keel's toolstack lays it out for a guest, and a guest
//! speaking the wire protocol through `Xenstored::handle`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use keel_xen::xenstore_wire::{XsMessage, XsType};
use keel_xenstored::{Access, LocalClient, Perm, Xenstored, XsError};

/// A store, the toolstack's in-process client, and guests 1..=n introduced with libxl's
/// layout: `/local/domain/<id>` = `[n0, r<id>]`, `data` and `device` owned by the guest.
pub fn store_with_guests(n: u16) -> (Xenstored, LocalClient) {
    let mut xs = Xenstored::new();
    let tool = xs.open_local();
    for id in 1..=n {
        add_guest(&mut xs, tool, id);
    }
    (xs, tool)
}

pub fn add_guest(xs: &mut Xenstored, tool: LocalClient, id: u16) {
    let home = format!("/local/domain/{id}");
    xs.write(
        tool,
        0,
        &format!("{home}/name"),
        format!("guest{id}").as_bytes(),
    )
    .unwrap();
    xs.set_perms(
        tool,
        0,
        &home,
        &[Perm::new(0, Access::None), Perm::new(id, Access::Read)],
    )
    .unwrap();
    xs.set_perms(
        tool,
        0,
        &format!("{home}/name"),
        &[Perm::new(0, Access::None), Perm::new(id, Access::Read)],
    )
    .unwrap();
    for sub in ["data", "device", "control"] {
        xs.mkdir(tool, 0, &format!("{home}/{sub}")).unwrap();
        xs.set_perms(
            tool,
            0,
            &format!("{home}/{sub}"),
            &[Perm::new(id, Access::None)],
        )
        .unwrap();
    }
    xs.introduce_domain(id, 10 + u32::from(id)).unwrap();
}

/// A guest on the wire.
pub struct Guest {
    pub domid: u16,
    next_req: u32,
    /// Watch events received, as (path, token).
    pub events: Vec<(String, String)>,
}

impl Guest {
    pub fn new(domid: u16) -> Self {
        Guest {
            domid,
            next_req: 1,
            events: Vec::new(),
        }
    }

    /// Sends one request and returns its reply payload (or the error it carried); watch
    /// events that arrive meanwhile are collected.
    pub fn raw(
        &mut self,
        xs: &mut Xenstored,
        kind: u32,
        tx: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        let req_id = self.next_req;
        self.next_req += 1;
        let kind = XsType::from_raw(kind).expect("test sends known types through raw()");
        let msg = XsMessage {
            kind,
            req_id,
            tx_id: tx,
            payload: payload.to_vec(),
        };
        xs.handle(self.domid, &msg).expect("request accepted");
        let mut reply = None;
        while let Some(m) = xs.take_message(self.domid) {
            if m.kind == XsType::WatchEvent {
                self.events.push(split_event(&m.payload));
                continue;
            }
            assert_eq!(m.req_id, req_id, "reply matches request");
            assert_eq!(m.tx_id, tx, "reply echoes tx id");
            assert!(reply.is_none(), "one reply per request");
            reply = Some(m);
        }
        let m = reply.expect("a reply");
        match m.error() {
            Some(e) => Err(e),
            None => {
                assert_eq!(m.kind, kind);
                Ok(m.payload)
            }
        }
    }

    pub fn call(
        &mut self,
        xs: &mut Xenstored,
        kind: XsType,
        tx: u32,
        parts: &[&[u8]],
        last_raw: bool,
    ) -> Result<Vec<u8>, XsError> {
        let m = XsMessage::build(kind, 0, tx, parts, last_raw).unwrap();
        self.raw(xs, kind as u32, tx, &m.payload)
    }

    pub fn read(&mut self, xs: &mut Xenstored, path: &str) -> Result<Vec<u8>, XsError> {
        self.call(xs, XsType::Read, 0, &[path.as_bytes()], false)
    }
    pub fn read_tx(&mut self, xs: &mut Xenstored, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        self.call(xs, XsType::Read, tx, &[path.as_bytes()], false)
    }
    pub fn write(&mut self, xs: &mut Xenstored, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.call(xs, XsType::Write, 0, &[path.as_bytes(), value], true)
            .map(ok)
    }
    pub fn write_tx(
        &mut self,
        xs: &mut Xenstored,
        tx: u32,
        path: &str,
        value: &[u8],
    ) -> Result<(), XsError> {
        self.call(xs, XsType::Write, tx, &[path.as_bytes(), value], true)
            .map(ok)
    }
    pub fn mkdir(&mut self, xs: &mut Xenstored, path: &str) -> Result<(), XsError> {
        self.call(xs, XsType::Mkdir, 0, &[path.as_bytes()], false)
            .map(ok)
    }
    pub fn rm(&mut self, xs: &mut Xenstored, path: &str) -> Result<(), XsError> {
        self.call(xs, XsType::Rm, 0, &[path.as_bytes()], false)
            .map(ok)
    }
    pub fn rm_tx(&mut self, xs: &mut Xenstored, tx: u32, path: &str) -> Result<(), XsError> {
        self.call(xs, XsType::Rm, tx, &[path.as_bytes()], false)
            .map(ok)
    }
    pub fn directory(&mut self, xs: &mut Xenstored, path: &str) -> Result<Vec<String>, XsError> {
        self.call(xs, XsType::Directory, 0, &[path.as_bytes()], false)
            .map(|p| split(&p))
    }
    pub fn get_perms(&mut self, xs: &mut Xenstored, path: &str) -> Result<Vec<String>, XsError> {
        self.call(xs, XsType::GetPerms, 0, &[path.as_bytes()], false)
            .map(|p| split(&p))
    }
    pub fn set_perms(
        &mut self,
        xs: &mut Xenstored,
        path: &str,
        perms: &[&str],
    ) -> Result<(), XsError> {
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(perms.iter().map(|s| s.as_bytes()));
        self.call(xs, XsType::SetPerms, 0, &parts, false).map(ok)
    }
    pub fn watch(&mut self, xs: &mut Xenstored, path: &str, token: &str) -> Result<(), XsError> {
        self.call(
            xs,
            XsType::Watch,
            0,
            &[path.as_bytes(), token.as_bytes()],
            false,
        )
        .map(ok)
    }
    pub fn unwatch(&mut self, xs: &mut Xenstored, path: &str, token: &str) -> Result<(), XsError> {
        self.call(
            xs,
            XsType::Unwatch,
            0,
            &[path.as_bytes(), token.as_bytes()],
            false,
        )
        .map(ok)
    }
    pub fn tx_start(&mut self, xs: &mut Xenstored) -> Result<u32, XsError> {
        let p = self.call(xs, XsType::TransactionStart, 0, &[b""], false)?;
        Ok(std::str::from_utf8(p.strip_suffix(b"\0").unwrap())
            .unwrap()
            .parse()
            .unwrap())
    }
    pub fn tx_end(&mut self, xs: &mut Xenstored, tx: u32, commit: bool) -> Result<(), XsError> {
        let arg: &[u8] = if commit { b"T" } else { b"F" };
        self.call(xs, XsType::TransactionEnd, tx, &[arg], false)
            .map(ok)
    }

    /// Collects events queued without a request.
    pub fn drain(&mut self, xs: &mut Xenstored) {
        while let Some(m) = xs.take_message(self.domid) {
            assert_eq!(m.kind, XsType::WatchEvent, "only events arrive unasked");
            self.events.push(split_event(&m.payload));
        }
    }

    pub fn take_events(&mut self, xs: &mut Xenstored) -> Vec<(String, String)> {
        self.drain(xs);
        std::mem::take(&mut self.events)
    }
}

fn ok(p: Vec<u8>) {
    assert_eq!(p, b"OK\0");
}

pub fn split(p: &[u8]) -> Vec<String> {
    let body = p.strip_suffix(b"\0").unwrap_or(p);
    if p.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

pub fn split_event(p: &[u8]) -> (String, String) {
    assert_eq!(p.last(), Some(&0), "event payload ends in NUL");
    let parts = split(p);
    assert_eq!(parts.len(), 2, "event is path\\0token\\0");
    (parts[0].clone(), parts[1].clone())
}

pub fn ev(path: &str, token: &str) -> (String, String) {
    (path.to_string(), token.to_string())
}

/// All local events of `c`.
pub fn local_events(xs: &mut Xenstored, c: LocalClient) -> Vec<(String, String)> {
    let mut v = Vec::new();
    while let Some(e) = xs.poll_event(c) {
        v.push((e.path, e.token));
    }
    v
}
