//! The traffic the lifecycle and systemd tests keep running across stops, restarts and
//! upgrades: from the lab's client, a new connection (one HTTP request) every 20 ms and
//! one long-lived connection exchanging a request every 100 ms, to port 80 of the VIP.
use std::{net::SocketAddr, thread::sleep, time::Duration};

use lb_lab::load::{Load, Session};

use super::lab::Lab;

pub struct Traffic {
    pub load: Load,
    pub session: Session,
}

impl Traffic {
    pub fn start(lab: &Lab) -> Traffic {
        let vip = SocketAddr::from((
            lab.vip().parse::<std::net::Ipv4Addr>().expect("the VIP"),
            80,
        ));
        let ns = lab.client_ns();
        let session = Session::start(&ns, vip, Duration::from_millis(100));
        assert!(session.seen().broken.is_none(), "{:?}", session.seen());
        let load = Load::start(&ns, vip, Duration::from_millis(20));
        sleep(Duration::from_millis(500));
        Traffic { load, session }
    }

    /// Panics unless no request failed and the long-lived connection is alive on its
    /// first backend, with more answers than `before`; returns its answers.
    pub fn assert_clean(&self, when: &str, before: usize) -> usize {
        let t = self.load.tally();
        assert!(
            t.failed.is_empty(),
            "{when}: {} of {} requests failed: {:?}",
            t.failed.len(),
            t.ok + t.failed.len(),
            &t.failed[..t.failed.len().min(5)]
        );
        let s = self.session.seen();
        assert!(
            s.broken.is_none(),
            "{when}: the long-lived connection broke: {s:?}"
        );
        assert_eq!(
            s.backends.len(),
            1,
            "{when}: the long-lived connection moved: {s:?}"
        );
        assert!(
            s.answered > before,
            "{when}: the long-lived connection stopped exchanging ({} answers)",
            s.answered
        );
        s.answered
    }
}
