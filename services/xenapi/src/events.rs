//! The event history behind `event.from`, `event.next` and `event.inject`.
//!
//! Every change to an object of a class with events on appends one [`Event`] with a
//! strictly increasing id. The history is a bounded ring: a client whose token is older than
//! the oldest kept event gets `EVENTS_LOST` and must re-read everything, which is exactly
//! what Xen Orchestra does on that error.
//!
//! Tokens are the decimal id of the last event the client has seen, zero-padded to 20 digits
//! (opaque to clients; only ever compared by this module). The empty token means "nothing
//! seen yet": `event.from` then answers with an `add` event per existing object.
//!
//! Each event keeps its object's record as it was, encoded ([`Snapshot`]): the history is
//! a thousand records and the tree form would cost dom0 about four times the heap.

mod snapshot;

pub use snapshot::Snapshot;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};

use crate::error::ApiError;
use crate::schema::ClassDecl;
use crate::time::Timestamp;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Add,
    Mod,
    Del,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Mod => "mod",
            Operation::Del => "del",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: u64,
    pub timestamp: Timestamp,
    /// The class name as declared (`VM`); rendered lowercase like xapi does.
    pub class: &'static str,
    pub operation: Operation,
    pub reference: String,
    /// The object's record after the change (before it, for `del`).
    pub snapshot: Snapshot,
}

impl Event {
    /// The event record as clients receive it.
    pub fn to_value(&self) -> Value {
        let mut m = BTreeMap::new();
        m.insert("id".to_string(), Value::Int(self.id as i64));
        m.insert(
            "timestamp".to_string(),
            Value::String(self.timestamp.to_unix_seconds_text()),
        );
        m.insert(
            "class".to_string(),
            Value::String(self.class.to_ascii_lowercase()),
        );
        m.insert("operation".to_string(), Value::str(self.operation.as_str()));
        m.insert("ref".to_string(), Value::String(self.reference.clone()));
        let snapshot = self.snapshot.to_value();
        if let Value::Struct(fields) = &snapshot {
            if let Some(uuid) = fields.get("uuid") {
                m.insert("obj_uuid".to_string(), uuid.clone());
            }
        }
        m.insert("snapshot".to_string(), snapshot);
        Value::Struct(m)
    }
}

/// Bounded, ordered history of events.
#[derive(Debug)]
pub struct EventLog {
    history: VecDeque<Event>,
    capacity: usize,
    last_id: u64,
}

/// A position in the event history, parsed from a client token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// `""`: the client has seen nothing.
    Start,
    /// The client has seen every event up to and including this id.
    After(u64),
}

impl Token {
    pub fn parse(text: &str) -> Result<Token, ApiError> {
        if text.is_empty() {
            return Ok(Token::Start);
        }
        if text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::EventFromTokenParseFailure {
                token: crate::codec::truncate(text.to_string(), 64),
            });
        }
        text.parse::<u64>()
            .map(Token::After)
            .map_err(|_| ApiError::EventFromTokenParseFailure {
                token: text.to_string(),
            })
    }
}

pub fn format_token(last_id: u64) -> String {
    format!("{last_id:020}")
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            history: VecDeque::new(),
            capacity: capacity.max(1),
            last_id: 0,
        }
    }

    /// Id of the newest event (0 before any).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Appends an event about `reference`, an object of `class`, whose record is now (or,
    /// for `del`, was) `snapshot`.
    pub fn push(
        &mut self,
        timestamp: Timestamp,
        class: &'static ClassDecl,
        operation: Operation,
        reference: String,
        snapshot: Value,
    ) -> u64 {
        self.last_id += 1;
        if self.history.len() >= self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(Event {
            id: self.last_id,
            timestamp,
            class: class.name,
            operation,
            reference,
            snapshot: Snapshot::new(&snapshot, class.fields),
        });
        self.last_id
    }

    /// Events with id greater than `after`, oldest first; `EVENTS_LOST` if some of them have
    /// already been dropped from the history.
    pub fn since(&self, after: u64) -> Result<impl Iterator<Item = &Event>, ApiError> {
        if after > self.last_id {
            // A token from the future (e.g. from before a restart): nothing it saw exists.
            return Err(ApiError::EventsLost);
        }
        let oldest_kept = self.history.front().map_or(self.last_id + 1, |e| e.id);
        if after + 1 < oldest_kept {
            return Err(ApiError::EventsLost);
        }
        Ok(self.history.iter().filter(move |e| e.id > after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(log: &mut EventLog, n: u64) {
        for _ in 0..n {
            log.push(
                Timestamp::default(),
                &crate::classes::POOL,
                Operation::Mod,
                "r".into(),
                Value::Nil,
            );
        }
    }

    #[test]
    fn since_returns_only_newer_events() {
        let mut log = EventLog::new(10);
        push(&mut log, 3);
        let ids: alloc::vec::Vec<u64> = log.since(1).unwrap().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(log.since(3).unwrap().count(), 0);
    }

    #[test]
    fn tokens_older_than_history_are_lost() {
        let mut log = EventLog::new(2);
        push(&mut log, 5); // keeps 4 and 5
        assert_eq!(log.since(3).unwrap().count(), 2);
        assert!(matches!(log.since(2), Err(ApiError::EventsLost)));
        assert!(matches!(log.since(99), Err(ApiError::EventsLost)));
    }

    #[test]
    fn tokens_round_trip_and_reject_junk() {
        assert_eq!(Token::parse(&format_token(42)), Ok(Token::After(42)));
        assert_eq!(Token::parse(""), Ok(Token::Start));
        for bad in ["abc", "-1", "1,2", "123456789012345678901"] {
            assert!(matches!(
                Token::parse(bad),
                Err(ApiError::EventFromTokenParseFailure { .. })
            ));
        }
    }
}
