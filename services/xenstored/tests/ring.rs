//! Serving guests over their store pages, and what a guest that sends garbage gets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use common::store_with_guests;
use keel_xen::xenstore_ring::{
    XenstoreDomainInterface, ERROR_PROTO, ERROR_RINGIDX, SERVER_FEATURE_ERROR,
};
use keel_xen::xenstore_wire::{request, XsDecoder, XsHeader, XsMessage, XsType};
use keel_xenstored::{prepare, CutOff, HandleError, Xenstored, XsError};

fn page() -> Box<XenstoreDomainInterface> {
    let p = Box::new(XenstoreDomainInterface::zeroed());
    prepare(&*p);
    p
}

/// The guest side: reads every whole message from the response ring.
struct GuestEnd {
    decoder: XsDecoder,
}

impl GuestEnd {
    fn new() -> Self {
        GuestEnd {
            decoder: XsDecoder::new(),
        }
    }
    fn receive(&mut self, page: &XenstoreDomainInterface) -> Vec<XsMessage> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = page.client_read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, m) = self.decoder.feed(rest).unwrap();
                rest = &rest[used..];
                out.extend(m);
            }
        }
    }
}

#[test]
fn prepare_advertises_error_reporting() {
    let p = page();
    assert_eq!(
        p.server_features.load(Ordering::SeqCst),
        SERVER_FEATURE_ERROR
    );
    assert_eq!(p.error.load(Ordering::SeqCst), 0);
}

#[test]
fn requests_and_replies_cross_the_ring_with_wraparound() {
    let (mut xs, _) = store_with_guests(1);
    let p = page();
    // Indices near the u32 wrap.
    for idx in [&p.req_cons, &p.req_prod, &p.rsp_cons, &p.rsp_prod] {
        idx.store(u32::MAX - 100, Ordering::SeqCst);
    }
    let mut guest = GuestEnd::new();
    let value = vec![b'v'; 1500];
    let msgs = [
        request::write(1, 0, "data/big", &value).unwrap().encode(),
        request::read(2, 0, "data/big").unwrap().encode(),
        request::directory(3, 0, "data").unwrap().encode(),
    ];
    let stream: Vec<u8> = msgs.concat();
    let mut sent = 0;
    let mut got = Vec::new();
    for _ in 0..100 {
        sent += p.client_write(&stream[sent..]).unwrap();
        let act = xs.service_ring(1, &*p).unwrap();
        let _ = act;
        got.extend(guest.receive(&p));
        if got.len() == 3 {
            break;
        }
    }
    assert_eq!(got.len(), 3);
    assert_eq!(
        (got[0].kind, got[0].req_id, got[0].payload.as_slice()),
        (XsType::Write, 1, b"OK\0".as_slice())
    );
    assert_eq!((got[1].kind, got[1].req_id), (XsType::Read, 2));
    assert_eq!(got[1].payload, value);
    assert_eq!(got[2].payload, b"big\0");
}

#[test]
fn partial_requests_wait_for_the_rest() {
    let (mut xs, _) = store_with_guests(1);
    let p = page();
    let bytes = request::read(9, 0, "name").unwrap().encode();
    let mut guest = GuestEnd::new();
    for (i, b) in bytes.iter().enumerate() {
        p.client_write(&[*b]).unwrap();
        let act = xs.service_ring(1, &*p).unwrap();
        assert!(
            act.notify,
            "consumed a byte: the guest may be waiting for space"
        );
        let got = guest.receive(&p);
        if i + 1 < bytes.len() {
            assert!(got.is_empty());
        } else {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].payload, b"guest1");
        }
    }
    // Nothing to do: no notification.
    assert!(!xs.service_ring(1, &*p).unwrap().notify);
}

#[test]
fn unknown_type_over_the_ring_is_answered_enosys() {
    let (mut xs, _) = store_with_guests(1);
    let p = page();
    let mut raw = XsHeader {
        kind: XsType::Read,
        req_id: 5,
        tx_id: 0,
        len: 0,
    }
    .encode();
    raw[0..4].copy_from_slice(&999u32.to_ne_bytes());
    p.client_write(&raw).unwrap();
    xs.service_ring(1, &*p).unwrap();
    let got = GuestEnd::new().receive(&p);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].req_id, got[0].error()), (5, Some(XsError::ENOSYS)));
    assert_eq!(xs.cut_off_reason(1), None);
}

/// Guest 1 misbehaves; guest 2 and dom0 must not notice.
fn others_unaffected(xs: &mut Xenstored, tool: keel_xenstored::LocalClient) {
    let p2 = page();
    p2.client_write(&request::read(1, 0, "name").unwrap().encode())
        .unwrap();
    xs.service_ring(2, &*p2).unwrap();
    let got = GuestEnd::new().receive(&p2);
    assert_eq!(got[0].payload, b"guest2");
    assert_eq!(xs.read(tool, 0, "/local/domain/2/name").unwrap(), b"guest2");
    xs.write(tool, 0, "/local/domain/1/data/still", b"ok")
        .unwrap();
}

#[test]
fn producer_index_running_ahead_cuts_the_guest_off() {
    let (mut xs, tool) = store_with_guests(2);
    let p = page();
    let mut g = common::Guest::new(1);
    g.watch(&mut xs, "data", "t").unwrap();
    p.req_prod.store(5000, Ordering::SeqCst);
    assert_eq!(
        xs.service_ring(1, &*p),
        Err(HandleError::CutOff(CutOff::RingIndex))
    );
    assert_eq!(p.error.load(Ordering::SeqCst), ERROR_RINGIDX);
    assert_eq!(xs.cut_off_reason(1), Some(CutOff::RingIndex));
    // Cut off for good: nothing more is read; its watches are gone.
    assert_eq!(
        xs.service_ring(1, &*p),
        Err(HandleError::CutOff(CutOff::RingIndex))
    );
    assert_eq!(xs.usage(1).watches, 0);
    assert_eq!(
        xs.handle(1, &request::read(1, 0, "name").unwrap()),
        Err(HandleError::CutOff(CutOff::RingIndex))
    );
    others_unaffected(&mut xs, tool);
    // The domain stays introduced until released; release cleans up.
    assert!(xs.is_domain_introduced(1));
    xs.release_domain(1).unwrap();
    assert!(!xs.is_domain_introduced(1));
}

#[test]
fn consumer_index_of_the_response_ring_running_ahead_cuts_off() {
    let (mut xs, tool) = store_with_guests(2);
    let p = page();
    p.rsp_cons.store(3000, Ordering::SeqCst);
    p.client_write(&request::read(1, 0, "name").unwrap().encode())
        .unwrap();
    assert_eq!(
        xs.service_ring(1, &*p),
        Err(HandleError::CutOff(CutOff::RingIndex))
    );
    assert_eq!(p.error.load(Ordering::SeqCst), ERROR_RINGIDX);
    others_unaffected(&mut xs, tool);
}

#[test]
fn oversized_length_cuts_off_with_proto_error() {
    let (mut xs, tool) = store_with_guests(2);
    let p = page();
    let h = XsHeader {
        kind: XsType::Write,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    }
    .encode();
    p.client_write(&h).unwrap();
    assert_eq!(
        xs.service_ring(1, &*p),
        Err(HandleError::CutOff(CutOff::Protocol))
    );
    assert_eq!(p.error.load(Ordering::SeqCst), ERROR_PROTO);
    others_unaffected(&mut xs, tool);
    // Exactly 4096 is fine for another guest.
    common::add_guest(&mut xs, tool, 3);
    let p3 = page();
    let mut payload = b"data/x\0".to_vec();
    payload.resize(4096, b'y');
    let h = XsHeader {
        kind: XsType::Write,
        req_id: 1,
        tx_id: 0,
        len: 4096,
    }
    .encode();
    let stream: Vec<u8> = h.iter().chain(payload.iter()).copied().collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut end = GuestEnd::new();
    while got.is_empty() {
        sent += p3.client_write(&stream[sent..]).unwrap();
        xs.service_ring(3, &*p3).unwrap();
        got = end.receive(&p3);
    }
    // (The node is too big for an unprivileged domain, but the message itself was fine.)
    assert_eq!(got[0].error(), Some(XsError::ENOSPC));
    assert_eq!(xs.cut_off_reason(3), None);
}

#[test]
fn a_guest_that_never_reads_is_held_to_bounded_memory() {
    let (mut xs, _) = store_with_guests(1);
    let p = page();
    // Fill the request ring with whole requests, again and again; never read.
    let one = request::read(1, 0, "name").unwrap().encode();
    let mut written = 0usize;
    for _ in 0..50 {
        loop {
            let in_flight =
                p.req_prod
                    .load(Ordering::SeqCst)
                    .wrapping_sub(p.req_cons.load(Ordering::SeqCst)) as usize;
            if 1024 - in_flight < one.len() {
                break;
            }
            assert_eq!(p.client_write(&one).unwrap(), one.len());
            written += one.len();
        }
        xs.service_ring(1, &*p).unwrap();
    }
    let u = xs.usage(1);
    assert_eq!(
        u.outstanding, 20,
        "reading stopped at the outstanding quota"
    );
    assert!(u.memory < 64 * 1024, "{u:?}");
    // The guest's rings are full both ways; it is blocked, not xenstored.
    assert_eq!(
        p.rsp_prod
            .load(Ordering::SeqCst)
            .wrapping_sub(p.rsp_cons.load(Ordering::SeqCst)),
        1024
    );
    assert!(written > 1024);
    // Once it reads, it makes progress again.
    let mut end = GuestEnd::new();
    let mut replies = end.receive(&p).len();
    for _ in 0..200 {
        xs.service_ring(1, &*p).unwrap();
        replies += end.receive(&p).len();
    }
    assert!(replies > 40, "{replies}");
}

#[test]
fn the_per_call_budget_is_reported() {
    let (mut xs, _) = store_with_guests(1);
    let p = page();
    let one = request::read(1, 0, "name").unwrap().encode();
    let mut end = GuestEnd::new();
    // 40 requests (21 bytes each) in two ring-fulls; the guest reads as it goes.
    let mut queued = 0;
    let mut replies = 0;
    let mut saw_more = false;
    while replies < 40 {
        while queued < 40 && p.client_write(&one).unwrap() == one.len() {
            queued += 1;
        }
        let act = xs.service_ring(1, &*p).unwrap();
        saw_more |= act.more;
        replies += end.receive(&p).len();
    }
    assert!(
        saw_more,
        "32 requests in one call: the caller is told to come back"
    );
}

#[test]
fn watch_events_reach_the_ring() {
    let (mut xs, tool) = store_with_guests(1);
    let p = page();
    p.client_write(&request::watch(1, "data", "tok").unwrap().encode())
        .unwrap();
    xs.service_ring(1, &*p).unwrap();
    let mut end = GuestEnd::new();
    let got = end.receive(&p);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].kind, XsType::WatchEvent);
    xs.write(tool, 0, "/local/domain/1/data/k", b"v").unwrap();
    assert_eq!(xs.domains_with_output(), [1]);
    let act = xs.service_ring(1, &*p).unwrap();
    assert!(act.notify);
    let got = end.receive(&p);
    assert_eq!(got[0].payload, b"data/k\0tok\0");
    assert!(xs.domains_with_output().is_empty());
}

#[test]
fn not_introduced_domains_are_refused() {
    let mut xs = Xenstored::new();
    let p = page();
    assert_eq!(xs.service_ring(7, &*p), Err(HandleError::NotIntroduced));
    assert_eq!(
        xs.handle(7, &request::read(1, 0, "x").unwrap()),
        Err(HandleError::NotIntroduced)
    );
}
