//! One module per `cargo xtask` command.

pub mod bench;
pub mod bench_api;
pub mod bench_dom0;
pub mod bench_guest_disk;
pub mod bench_guest_net;
pub mod bench_guests;
pub mod bench_guests_net;
pub mod bench_soak;
pub mod bench_storage;
pub mod bench_vm;
pub mod build;
pub mod console;
pub mod image;
pub mod integration;
pub mod prereq;
pub mod run;
pub mod test;
pub mod vm;
