//! Guest networks on the reference stack ([`crate::reference`]): guests with one VIF on dom0's
//! bridge [`BRIDGE`] — Linux's netback, the bridge and dom0's virtio-net uplink on QEMU's user
//! network — and files handed to dom0 from the host over that same network.
//!
//! QEMU's user network forwards the guest-side address [`QEMU_HOST_ADDRESS`]`:PORT` to
//! `127.0.0.1:PORT` on the host, so a one-shot server on the host's loopback hands dom0 a file
//! that is not in its initramfs ([`put_file`]): the guest benchmarks' initramfs with extra
//! tools, say, without rebuilding dom0's archive.

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::reference::{self, ReferenceHost};

/// dom0's bridge to its uplink (made by [`reference::DOM0_INIT`]).
pub const BRIDGE: &str = "xenbr0";

/// The host as QEMU's user network shows it to the machine (and to guests bridged onto it).
pub const QEMU_HOST_ADDRESS: &str = "10.0.2.2";

/// How long [`put_file`] waits for dom0 to connect and read the file: 8–9 MiB through QEMU's
/// user network into a TCG machine on a loaded host.
pub const PUT_DEADLINE: Duration = Duration::from_secs(300);

fn failure(what: impl Into<String>, message: impl Into<String>) -> HarnessError {
    HarnessError::Io {
        what: what.into(),
        error: std::io::Error::other(message.into()),
    }
}

/// An `xl` configuration: [`reference::guest_config`] (the guest of [`crate::guest`] doing
/// `action`) booting `ramdisk` (a path in dom0), with one VIF of `mac` on [`BRIDGE`].
pub fn net_guest_config(
    name: &str,
    action: &str,
    memory_mib: u64,
    ramdisk: &str,
    mac: &str,
) -> String {
    let config = reference::guest_config(name, action, memory_mib).replace(
        &format!("ramdisk = \"{}\"", reference::GUEST_INITRD),
        &format!("ramdisk = \"{ramdisk}\""),
    );
    format!("{config}vif = [ \"mac={mac},bridge={BRIDGE}\" ]\n")
}

/// Puts `data` into dom0 at `path`: a one-shot server on the host's loopback sends it and
/// closes, dom0's busybox `nc` reads it from [`QEMU_HOST_ADDRESS`] to the end; the size
/// written is checked.
pub fn put_file(host: &ReferenceHost, path: &str, data: &[u8]) -> Result<(), HarnessError> {
    if path.contains(['\'', ' ', ';', '\n']) {
        return Err(failure(
            "a file for dom0",
            format!("unusable path {path:?}"),
        ));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| HarnessError::Io {
        what: "binding the file server for dom0".into(),
        error,
    })?;
    let port = listener
        .local_addr()
        .map_err(|error| HarnessError::Io {
            what: "the file server's port".into(),
            error,
        })?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(|error| HarnessError::Io {
            what: "the file server's socket".into(),
            error,
        })?;
    let payload = data.to_vec();
    // Serves one connection, or gives up at the deadline so that the thread always ends.
    let server = thread::spawn(move || -> std::io::Result<()> {
        let deadline = Instant::now() + PUT_DEADLINE;
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_write_timeout(Some(PUT_DEADLINE))?;
                    return conn.write_all(&payload);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(std::io::Error::other("dom0 never connected"));
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    });
    let reply = host.run(
        &format!("nc {QEMU_HOST_ADDRESS} {port} </dev/null > '{path}'; wc -c < '{path}'"),
        PUT_DEADLINE,
    );
    let served = server
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the file server panicked")));
    let reply = reply?;
    let written = reply.output.trim().parse::<usize>().ok();
    if written != Some(data.len()) {
        return Err(failure(
            format!("putting {path} into dom0"),
            format!(
                "{} of {} bytes written (server: {served:?}): {}",
                written.map_or("?".into(), |n| n.to_string()),
                data.len(),
                reply.output.trim()
            ),
        ));
    }
    Ok(())
}

/// The counters of a network interface in dom0 (`/sys/class/net/IF/statistics/*`), from
/// `NAME VALUE` lines; lines that are not such are skipped.
pub fn parse_statistics(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The counters of guest `domid`'s first VIF as dom0's netback shows it (`vifD.0`).
pub fn vif_statistics(
    host: &ReferenceHost,
    domid: u32,
) -> Result<Vec<(String, u64)>, HarnessError> {
    let out = host.run_ok(
        &format!(
            "for f in /sys/class/net/vif{domid}.0/statistics/*; do echo \"${{f##*/}} $(cat $f)\"; done"
        ),
        Duration::from_secs(60),
    )?;
    Ok(parse_statistics(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_net_guest_boots_its_ramdisk_with_one_vif_on_the_bridge() {
        let config = net_guest_config(
            "net-a",
            "peer keel_steps=ip=eth0@10.0.2.50/24,sink=5001",
            128,
            "/tmp/guest-net.cpio",
            "02:00:00:00:00:0a",
        );
        for line in [
            "name = \"net-a\"",
            "ramdisk = \"/tmp/guest-net.cpio\"",
            "memory = 128",
            "vif = [ \"mac=02:00:00:00:00:0a,bridge=xenbr0\" ]",
        ] {
            assert!(config.lines().any(|l| l == line), "{line}: {config}");
        }
        assert!(config.contains("keel_guest=peer keel_steps=ip=eth0@10.0.2.50/24,sink=5001"));
        assert!(!config.contains(reference::GUEST_INITRD), "{config}");
        // Written into dom0 with printf in single quotes: neither may appear.
        assert!(!config.contains('\'') && !config.contains('%'));
    }

    #[test]
    fn statistics_are_name_value_lines() {
        let text = "rx_bytes 8552544\nrx_dropped 0\ntx_packets 6604\ncat: x: No such file\nnoise\n";
        assert_eq!(
            parse_statistics(text),
            vec![
                ("rx_bytes".to_string(), 8_552_544),
                ("rx_dropped".to_string(), 0),
                ("tx_packets".to_string(), 6604),
            ]
        );
        assert!(parse_statistics("").is_empty());
    }
}
