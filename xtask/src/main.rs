//! `cargo xtask`: Keel's build, run, test and benchmark driver (host binary).
//!
//! `build` makes the image, `run` boots it in QEMU on the terminal (as Xen's dom0 unless
//! `--no-xen`), `prereq` installs what every command and test uses, `test` installs that and
//! runs the host unit tests and then the QEMU integration tests, `bench …` measures, `image`
//! writes boot media (PXE bundle, GRUB ISO) with `keel-image-builder`. QEMU flags, image building and
//! prerequisites come from the `keel-tests` harness library so that all of these boot exactly
//! as the tests do.

mod bench_report;
mod cli;
mod commands;
mod date;
mod error;
mod load;
mod progress;
mod stats;

use std::process::ExitCode;

use cli::Command;
use error::XtaskError;

fn main() -> ExitCode {
    match run(std::env::args().skip(1)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            if matches!(error, XtaskError::Usage(_)) {
                eprint!("\n{}", cli::USAGE);
            }
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(args: impl Iterator<Item = String>) -> Result<ExitCode, XtaskError> {
    match cli::parse(args)? {
        Command::Help => {
            print!("{}", cli::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { release } => commands::build::run(release).map(|()| ExitCode::SUCCESS),
        Command::Run(options) => commands::run::run(&options),
        Command::Test => commands::test::run().map(|()| ExitCode::SUCCESS),
        Command::BenchBoot { runs, record } => {
            commands::bench::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchApi { runs, record } => {
            commands::bench_api::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchDom0 { runs, record } => {
            commands::bench_dom0::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchStorage { runs, record } => {
            commands::bench_storage::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchSoak(options) => {
            commands::bench_soak::run(&options).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchGuestDisk { runs, record } => {
            commands::bench_guest_disk::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchGuestNet { runs, record } => {
            commands::bench_guest_net::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchGuests { runs, record } => {
            commands::bench_guests::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::BenchVm { runs, record } => {
            commands::bench_vm::run(runs, record).map(|()| ExitCode::SUCCESS)
        }
        Command::Prereq => commands::prereq::run().map(|()| ExitCode::SUCCESS),
        Command::Image(words) => commands::image::run(&words).map(|()| ExitCode::SUCCESS),
        Command::Console(words) => commands::console::run(&words),
        Command::Vm(words) => commands::vm::run(&words),
    }
}
