//! Control-plane integration tests (see tests/support/daemon.rs).
