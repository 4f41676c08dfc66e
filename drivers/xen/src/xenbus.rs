//! The xenbus device states (`xen/include/public/io/xenbus.h`), which every split driver's
//! frontend and backend write to their `state` nodes.

/// `enum xenbus_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    /// Backend: features published, waiting for the frontend's transport parameters.
    InitWait = 2,
    /// Frontend: transport parameters published.
    Initialised = 3,
    Connected = 4,
    /// Going away: the other end should close.
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => XenbusState::Unknown,
            1 => XenbusState::Initialising,
            2 => XenbusState::InitWait,
            3 => XenbusState::Initialised,
            4 => XenbusState::Connected,
            5 => XenbusState::Closing,
            6 => XenbusState::Closed,
            7 => XenbusState::Reconfiguring,
            8 => XenbusState::Reconfigured,
            _ => return None,
        })
    }

    /// A `state` node's value; a missing or unparsable one reads as Unknown (the other end
    /// went away or never came).
    pub fn parse(value: Option<&str>) -> Self {
        value
            .and_then(|v| v.trim().parse().ok())
            .and_then(Self::from_code)
            .unwrap_or(XenbusState::Unknown)
    }

    pub const fn code(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_anything_else_is_unknown() {
        for code in 0..=8u64 {
            let state = XenbusState::from_code(code).expect("a xenbus state");
            assert_eq!(u64::from(state.code()), code);
            assert_eq!(XenbusState::parse(Some(&code.to_string())), state);
        }
        assert_eq!(XenbusState::from_code(9), None);
        for bad in [Some("9"), Some("x"), Some(""), Some("-1"), None] {
            assert_eq!(XenbusState::parse(bad), XenbusState::Unknown);
        }
        assert_eq!(XenbusState::parse(Some("4\n")), XenbusState::Connected);
    }
}
