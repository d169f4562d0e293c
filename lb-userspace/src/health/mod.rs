//! Health checks: probes and the rise/fall state machine (no aya).
