//! Saving and restoring all RRDs, so charts keep their history across a host reboot as
//! xapi's do. The snapshot is one checksummed frame (the usage journal's framing); where it
//! is kept is the kernel's choice (any store that replaces it atomically, e.g.
//! [`crate::UsageStore::compact`] on a store of its own). Save it at shutdown and now and then
//! (every few minutes); a power cut loses what came after the last save.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{DecodeError, Reader, Writer};
use crate::meter::{is_uuid, HostMeter, Metering, VmMeter};
use crate::rrd::Rrd;
use crate::source::{HostShape, VmShape};
use crate::store::{push_frame, split_frames};

const SNAPSHOT_VERSION: u8 = 1;

/// Why a snapshot was not restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// Not exactly one whole frame with a valid checksum.
    Torn,
    Decode(DecodeError),
    /// Saved by another host (another uuid).
    OtherHost(String),
    /// More VM RRDs than the metering may hold.
    TooManyVms(usize),
}

impl From<DecodeError> for RestoreError {
    fn from(e: DecodeError) -> Self {
        RestoreError::Decode(e)
    }
}

impl Metering {
    /// All RRDs (the host's and every VM's), as one checksummed frame.
    pub fn save(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(SNAPSHOT_VERSION);
        w.text(&self.host_uuid);
        match &self.host {
            Some(host) => {
                w.bool(true);
                w.u32(host.shape.cpus as u32);
                w.len(host.shape.pifs.len());
                for pif in &host.shape.pifs {
                    w.text(pif);
                }
                host.rrd.encode(&mut w);
            }
            None => w.bool(false),
        }
        w.len(self.vms.len());
        for (uuid, vm) in &self.vms {
            w.text(uuid);
            w.u32(vm.shape.vcpus as u32);
            w.len(vm.shape.vbds.len());
            for vbd in &vm.shape.vbds {
                w.text(vbd);
            }
            w.len(vm.shape.vifs.len());
            for vif in &vm.shape.vifs {
                w.u32(*vif);
            }
            vm.rrd.encode(&mut w);
        }
        let mut frame = Vec::new();
        push_frame(&mut frame, &w.bytes);
        frame
    }

    /// Restores what [`Metering::save`] wrote for host `host_uuid`. The VMs are not running
    /// until sampled again; the time since the save reads unknown.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let (frames, torn) = split_frames(snapshot);
        let [payload] = frames.as_slice() else {
            return Err(RestoreError::Torn);
        };
        if torn != 0 {
            return Err(RestoreError::Torn);
        }
        let mut r = Reader::new(payload);
        if r.u8()? != SNAPSHOT_VERSION {
            return Err(RestoreError::Decode(DecodeError::BadValue));
        }
        let host_uuid = r.text()?;
        if host_uuid != self.host_uuid {
            return Err(RestoreError::OtherHost(host_uuid));
        }
        let host = if r.bool()? {
            let cpus = r.u32()? as usize;
            let mut pifs = Vec::new();
            for _ in 0..r.len(4)? {
                pifs.push(r.text()?);
            }
            let rrd = Rrd::decode(&mut r)?;
            Some(HostMeter {
                shape: HostShape { cpus, pifs },
                rrd,
                previous: None,
            })
        } else {
            None
        };
        let count = r.len(36)?;
        if count > self.max_vms {
            return Err(RestoreError::TooManyVms(count));
        }
        let mut vms = BTreeMap::new();
        for _ in 0..count {
            let uuid = r.text()?;
            if !is_uuid(&uuid) {
                return Err(RestoreError::Decode(DecodeError::BadValue));
            }
            let vcpus = r.u32()? as usize;
            let mut vbds = Vec::new();
            for _ in 0..r.len(4)? {
                vbds.push(r.text()?);
            }
            let mut vifs = Vec::new();
            for _ in 0..r.len(4)? {
                vifs.push(r.u32()?);
            }
            let rrd = Rrd::decode(&mut r)?;
            vms.insert(
                uuid,
                VmMeter {
                    shape: VmShape { vcpus, vbds, vifs },
                    rrd,
                    previous: None,
                    running: false,
                },
            );
        }
        if !r.is_empty() {
            return Err(RestoreError::Decode(DecodeError::TooLong));
        }
        self.host = host;
        self.vms = vms;
        Ok(())
    }
}
