//! Trace mxpace's pacing changes on one flight-simulator scenario (development aid).
use mxpace_pacing::flight::receiver::{ModelReceiver, Receiver, Reply};
use mxpace_pacing::flight::{self, policy::Mxpace, scenario::Scenario};
use mxpace_pacing::*;
use std::net::IpAddr;

struct Counting {
    inner: ModelReceiver,
    per_min: Vec<(u32, u32)>,
}
impl Receiver for Counting {
    fn connect(&mut self, s: IpAddr, t: &str, now: Moment) -> Reply {
        self.inner.connect(s, t, now)
    }
    fn deliver(&mut self, s: IpAddr, t: &str, id: u64, now: Moment) -> Reply {
        let r = self.inner.deliver(s, t, id, now);
        if s.to_string().ends_with(".10") {
            let m = (now.as_secs_f64() / 60.0) as usize;
            if self.per_min.len() <= m {
                self.per_min.resize(m + 1, (0, 0));
            }
            if r.is_ok() {
                self.per_min[m].0 += 1
            } else {
                self.per_min[m].1 += 1
            }
        }
        r
    }
    fn close(&mut self, s: IpAddr, now: Moment) {
        self.inner.close(s, now)
    }
    fn duplicates(&self) -> u64 {
        self.inner.duplicates()
    }
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or("steady".into());
    let scale: f64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1.0);
    let limit: usize = std::env::args()
        .nth(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(60);
    let s = Scenario::builtin(&name, scale).unwrap();
    let mut p = Mxpace::new(PacingConfig::builtin(), s.ips).with_change_log();
    let mut rc = Counting {
        inner: ModelReceiver::new(s.receiver.clone(), 1),
        per_min: vec![],
    };
    let (r, _) = flight::run_with(&s, &mut p, &mut rc, 1);
    for c in p
        .change_log()
        .iter()
        .filter(|c| c.path.source_ip.to_string().ends_with(".10"))
        .take(limit)
    {
        println!(
            "{:>8.0} {:?} {:.1}->{:.1}/min c{} {:?}->{:?} {:?}",
            c.at.as_secs_f64(),
            c.trigger,
            c.from.rate_per_min,
            c.to.rate_per_min,
            c.to.connections,
            c.state_from,
            c.state_to,
            c.band
        );
    }
    let line: Vec<String> = rc
        .per_min
        .iter()
        .step_by(5)
        .take(200)
        .map(|(a, d)| format!("{a}/{d}"))
        .collect();
    println!("per-minute ok/deferred every 5 min: {}", line.join(" "));
    println!("{r:?} ideal {}", s.ideal_completion_secs());
}
