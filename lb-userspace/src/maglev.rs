//! Weighted Maglev table builder (pure: no aya, no I/O).
