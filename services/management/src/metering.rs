//! What the metering routes need (`/rrd_updates`, `/host_rrd`, `/vm_rrd`, `/usage`,
//! `/usage/ack`; docs/metering.md, "Endpoints"), handed to the server by the kernel
//! ([`crate::ManagementServer::set_metering`]). The routes themselves are
//! `connection/metering.rs`.
//!
//! [`Meters`] is the host's metering as the kernel keeps it: the RRDs and the usage ledger
//! side by side, shared (`Rc<RefCell<_>>`) by the sampling task, this server and the
//! XenAPI's data source calls ([`keel_xenapi::MeteringView`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keel_xenapi::keel_metering::source::DataSourceRecord;
use keel_xenapi::keel_metering::{
    AckReport, ExportError, Metering, UpdatesQuery, Usage, UsageError, UsageQuery, UsageStore,
};
use keel_xenapi::MeteringView;

/// Why a usage export or acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageFailure {
    /// `from`/`to` not whole hours, reversed, or more than 400 days apart.
    BadPeriod { from: u64, to: u64 },
    /// An acknowledgement of a period none of whose rows were exported.
    NothingExported,
    /// The ledger could not be written (disk error) or is full: retry later.
    Unavailable(String),
    /// The ledger is damaged or another internal fault.
    Internal(String),
}

impl<E: core::fmt::Debug> From<UsageError<E>> for UsageFailure {
    fn from(error: UsageError<E>) -> Self {
        match error {
            UsageError::BadPeriod { from, to } => UsageFailure::BadPeriod { from, to },
            UsageError::NothingExported { .. } => UsageFailure::NothingExported,
            UsageError::Store(e) => UsageFailure::Unavailable(format!("usage store: {e:?}")),
            UsageError::LedgerFull { rows } => UsageFailure::Unavailable(format!(
                "the usage ledger is full ({rows} rows): export and acknowledge older periods"
            )),
            other => UsageFailure::Internal(format!("{other:?}")),
        }
    }
}

/// The metering as the HTTP routes read it. `now_s` is the wall clock in seconds.
pub trait MeteringAccess {
    /// `GET /rrd_updates`: xport XML or JSON.
    fn rrd_updates(&self, now_s: u64, query: &UpdatesQuery) -> Result<String, ExportError>;
    /// `GET /host_rrd`: the host's RRD in rrdtool's dump format.
    fn host_rrd(&self) -> Result<String, ExportError>;
    /// `GET /vm_rrd?uuid=`.
    fn vm_rrd(&self, uuid: &str) -> Result<String, ExportError>;
    /// `GET /usage`: the rows of the period, durably marked exported.
    fn usage_export(&mut self, query: &UsageQuery) -> Result<String, UsageFailure>;
    /// `POST /usage/ack`.
    fn usage_ack(&mut self, from: u64, to: u64) -> Result<AckReport, UsageFailure>;
}

/// The host's RRDs and usage ledger.
pub struct Meters<S: UsageStore> {
    pub metering: Metering,
    pub usage: Usage<S>,
}

impl<S: UsageStore> MeteringAccess for Meters<S> {
    fn rrd_updates(&self, now_s: u64, query: &UpdatesQuery) -> Result<String, ExportError> {
        self.metering.rrd_updates(now_s, query)
    }

    fn host_rrd(&self) -> Result<String, ExportError> {
        self.metering.host_rrd_xml()
    }

    fn vm_rrd(&self, uuid: &str) -> Result<String, ExportError> {
        self.metering.vm_rrd_xml(uuid)
    }

    fn usage_export(&mut self, query: &UsageQuery) -> Result<String, UsageFailure> {
        Ok(self.usage.export(query.from, query.to, query.format)?)
    }

    fn usage_ack(&mut self, from: u64, to: u64) -> Result<AckReport, UsageFailure> {
        Ok(self.usage.ack(from, to)?)
    }
}

impl<S: UsageStore> MeteringView for Meters<S> {
    fn host_data_sources(&self) -> Vec<DataSourceRecord> {
        self.metering.host_data_sources()
    }

    fn vm_data_sources(&self, vm_uuid: &str) -> Option<Vec<DataSourceRecord>> {
        self.metering.vm_data_sources(vm_uuid).ok()
    }

    fn query_host(&self, name: &str) -> Option<f64> {
        self.metering.query_host(name).ok()
    }

    fn query_vm(&self, vm_uuid: &str, name: &str) -> Option<f64> {
        self.metering.query_vm(vm_uuid, name).ok()
    }
}

/// Shared ownership, as the kernel and tests hold the meters beside the server.
impl<A: MeteringAccess> MeteringAccess for alloc::rc::Rc<core::cell::RefCell<A>> {
    fn rrd_updates(&self, now_s: u64, query: &UpdatesQuery) -> Result<String, ExportError> {
        self.borrow().rrd_updates(now_s, query)
    }

    fn host_rrd(&self) -> Result<String, ExportError> {
        self.borrow().host_rrd()
    }

    fn vm_rrd(&self, uuid: &str) -> Result<String, ExportError> {
        self.borrow().vm_rrd(uuid)
    }

    fn usage_export(&mut self, query: &UsageQuery) -> Result<String, UsageFailure> {
        self.borrow_mut().usage_export(query)
    }

    fn usage_ack(&mut self, from: u64, to: u64) -> Result<AckReport, UsageFailure> {
        self.borrow_mut().usage_ack(from, to)
    }
}

/// Meters not made yet (the kernel makes them once it knows the host's uuid): the routes
/// say so.
impl<A: MeteringAccess> MeteringAccess for Option<A> {
    fn rrd_updates(&self, now_s: u64, query: &UpdatesQuery) -> Result<String, ExportError> {
        match self {
            Some(a) => a.rrd_updates(now_s, query),
            None => Err(ExportError::UnknownUuid(String::from("host"))),
        }
    }

    fn host_rrd(&self) -> Result<String, ExportError> {
        match self {
            Some(a) => a.host_rrd(),
            None => Err(ExportError::UnknownUuid(String::from("host"))),
        }
    }

    fn vm_rrd(&self, uuid: &str) -> Result<String, ExportError> {
        match self {
            Some(a) => a.vm_rrd(uuid),
            None => Err(ExportError::UnknownUuid(String::from(uuid))),
        }
    }

    fn usage_export(&mut self, query: &UsageQuery) -> Result<String, UsageFailure> {
        match self {
            Some(a) => a.usage_export(query),
            None => Err(not_started()),
        }
    }

    fn usage_ack(&mut self, from: u64, to: u64) -> Result<AckReport, UsageFailure> {
        match self {
            Some(a) => a.usage_ack(from, to),
            None => Err(not_started()),
        }
    }
}

fn not_started() -> UsageFailure {
    UsageFailure::Unavailable(String::from(
        "the usage ledger opens once the management service is up; retry",
    ))
}
