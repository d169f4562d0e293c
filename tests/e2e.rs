//! End-to-end tests on the lab: real clients (curl, socat, iperf3) and servers (nginx,
//! socat) in network namespaces, through `lb run`, in both DSR and NAT modes.
mod support;

use std::collections::BTreeMap;

use support::{
    lab::Mode,
    running::{QUICK_CHECK, Running},
};

fn assert_even(counts: &BTreeMap<String, usize>, n: usize, backends: &[&str]) {
    let share = n as f64 / backends.len() as f64;
    for b in backends {
        let got = counts.get(*b).copied().unwrap_or(0) as f64;
        assert!(
            (got - share).abs() <= share * 0.25,
            "{b} got {got} of {n} (equal share {share:.0} ± 25%): {counts:?}"
        );
    }
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
}

#[test]
fn dsr_spreads_new_connections_evenly() {
    let r = Running::start(Mode::Dsr, "lbt-d1", QUICK_CHECK, false);
    let counts = r.spread(300);
    assert_even(&counts, 300, &["b1", "b2", "b3"]);
}

#[test]
fn nat_spreads_new_connections_evenly() {
    let r = Running::start(Mode::Nat, "lbt-n1", QUICK_CHECK, false);
    let counts = r.spread(300);
    assert_even(&counts, 300, &["b1", "b2", "b3"]);
}
