//! QEMU harness.
