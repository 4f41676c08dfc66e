//! The disk-data routes of a connection: `PUT /import_raw_vdi` and `GET /export_raw_vdi`
//! (query `session_id`, `vdi`, optional `task_id` and `format=raw`), streamed through the
//! connection's bounded buffers: import body chunks go to the VDI as they arrive, export
//! data is read as the peer takes it. The meaning (checks, task, VDI_IN_USE, durability)
//! is the XenAPI's ([`keel_xenapi::transfer`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_http::{BodyKind, Method, Request, ResponseBody};
use keel_xenapi::{ApiError, Direction, Timestamp, Transfer, TransferRequest, XenApi};

use super::{Conn, State};

/// The HTTP status that carries an API error from a transfer route.
pub(crate) fn status_for(error: &ApiError) -> u16 {
    match error {
        ApiError::SessionInvalid { .. } => 401,
        ApiError::VdiReadOnly { .. } => 403,
        ApiError::HandleInvalid { .. } | ApiError::UuidInvalid { .. } => 404,
        ApiError::VdiInUse { .. } | ApiError::TaskCancelled { .. } => 409,
        ApiError::ValueNotSupported { .. } | ApiError::FieldTypeError { .. } => 400,
        ApiError::SrFull { .. } => 507,
        _ => 500,
    }
}

/// `CODE param param…` as the text body of an error response.
fn error_body(error: &ApiError) -> Vec<u8> {
    let mut text = error.description().join(" ");
    text.push('\n');
    text.into_bytes()
}

/// The query of a transfer request.
fn transfer_request(request: &Request) -> Result<TransferRequest, ApiError> {
    let param = |name: &str| {
        request
            .query_param(name)
            .map_err(|e| ApiError::ValueNotSupported {
                field: String::from(name),
                value: String::new(),
                reason: format!("{e}"),
            })
    };
    Ok(TransferRequest {
        session_id: param("session_id")?.unwrap_or_default(),
        vdi: param("vdi")?.unwrap_or_default(),
        task_id: param("task_id")?.filter(|t| !t.is_empty()),
        format: param("format")?,
    })
}

impl Conn {
    /// A request head on a transfer route: check it and start the transfer, or answer.
    pub(super) fn on_transfer_head(
        &mut self,
        direction: Direction,
        request: &Request,
        api: &mut XenApi,
        now: Timestamp,
    ) {
        let method_ok = match direction {
            Direction::Import => request.method == Method::Put,
            Direction::Export => matches!(request.method, Method::Get | Method::Head),
        };
        if !method_ok {
            let allow: &'static [(&'static str, &'static str)] = match direction {
                Direction::Import => &[("Allow", "PUT")],
                Direction::Export => &[("Allow", "GET")],
            };
            self.answer_ignoring_body(request, 405, allow, b"wrong method\n".to_vec());
            return;
        }
        let content_length = match request.body {
            BodyKind::Length(n) => Some(n),
            BodyKind::None => Some(0),
            BodyKind::Chunked => None,
        };
        let started = transfer_request(request)
            .and_then(|query| api.start_transfer(direction, &query, content_length, now));
        match started {
            Ok(transfer) => {
                if direction == Direction::Import {
                    // The body is bounded by the VDI's size, checked as it arrives.
                    self.http.set_body_limit(transfer.size());
                }
                self.state = State::Transfer {
                    transfer,
                    error: None,
                };
            }
            Err(error) => {
                self.answer_ignoring_body(
                    request,
                    status_for(&error),
                    &[("Content-Type", "text/plain")],
                    error_body(&error),
                );
            }
        }
    }

    /// An import body chunk: written through to the VDI. After the first failure the rest of
    /// the body is read and dropped; the failure is the answer at the body's end.
    pub(super) fn on_transfer_chunk(
        state: &mut State,
        bytes: &[u8],
        api: &mut XenApi,
        now: Timestamp,
    ) {
        if let State::Transfer {
            transfer,
            error: error @ None,
        } = state
        {
            if transfer.direction() == Direction::Import {
                if let Err(e) = api.import_data(transfer, bytes, now) {
                    *error = Some(e);
                }
            }
        }
    }

    /// The request's end: an import is finished and answered; an export starts its response.
    pub(super) fn on_transfer_end(
        &mut self,
        transfer: Transfer,
        error: Option<ApiError>,
        api: &mut XenApi,
        now: Timestamp,
    ) {
        if let Some(error) = error {
            self.respond(
                status_for(&error),
                &[("Content-Type", "text/plain")],
                error_body(&error),
            );
            api.fail_transfer(transfer, error, now);
            return;
        }
        match transfer.direction() {
            Direction::Import => match api.finish_transfer(transfer, now) {
                Ok(()) => self.respond(200, &[], Vec::new()),
                Err(error) => self.respond(
                    status_for(&error),
                    &[("Content-Type", "text/plain")],
                    error_body(&error),
                ),
            },
            Direction::Export => {
                let headers = [("Content-Type", "application/octet-stream")];
                match self
                    .http
                    .start_response(200, &headers, ResponseBody::Length(transfer.size()))
                {
                    Ok(()) => {
                        self.state = State::Transfer {
                            transfer,
                            error: None,
                        }
                    }
                    Err(e) => {
                        log::warn!("management: cannot start an export response: {e:?}");
                        api.fail_transfer(
                            transfer,
                            ApiError::InternalError {
                                message: String::from("the connection closed"),
                            },
                            now,
                        );
                    }
                }
            }
        }
    }

    /// Moves export data into the output window while it has room. Returns true on
    /// progress. A read failure cuts the response short (the client sees a short body; the
    /// task says why).
    pub(super) fn pump_export(&mut self, api: &mut XenApi, now: Timestamp) -> bool {
        let State::Transfer { transfer, .. } = &mut self.state else {
            return false;
        };
        if transfer.direction() != Direction::Export {
            return false;
        }
        let mut progressed = false;
        loop {
            match api.export_refill(transfer, now) {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    let State::Transfer { transfer, .. } =
                        core::mem::replace(&mut self.state, State::Idle)
                    else {
                        return progressed;
                    };
                    api.fail_transfer(transfer, error, now);
                    self.http.close_after_response();
                    let _ = self.http.finish_response();
                    return true;
                }
            }
            match self.http.write_body(transfer.output()) {
                Ok(0) => return progressed,
                Ok(n) => {
                    transfer.consume(n);
                    progressed = true;
                }
                Err(e) => {
                    log::warn!("management: export cut off: {e:?}");
                    self.abandon(api, now);
                    return true;
                }
            }
        }
        if let State::Transfer { transfer, .. } = core::mem::replace(&mut self.state, State::Idle) {
            let _ = self.http.finish_response();
            if let Err(e) = api.finish_transfer(transfer, now) {
                log::warn!("management: export ended badly: {e:?}");
            }
            progressed = true;
        }
        progressed
    }

    /// The connection is going away: a transfer still running fails (its task says so and
    /// the VDI is free again).
    pub(crate) fn abandon(&mut self, api: &mut XenApi, now: Timestamp) {
        if let State::Transfer { transfer, .. } = core::mem::replace(&mut self.state, State::Idle) {
            api.fail_transfer(
                transfer,
                ApiError::InternalError {
                    message: String::from("the client went away before the transfer finished"),
                },
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests;
