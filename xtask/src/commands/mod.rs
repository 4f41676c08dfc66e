//! One module per `cargo xtask` command.

pub mod bench;
pub mod build;
pub mod run;
pub mod test;
