//! A real authoritative DNS server (Debian's nsd) on loopback, serving a copy of the zone
//! files in `crates/identity/tests/zones/`, on a free port with its own config, pid, state
//! and zone files in a temp dir (so a test may change a zone and reload). Stopped (SIGTERM,
//! then SIGKILL) when dropped, even on panic.
//! Shared by the identity crate's tests and the `mxpace` binary's `check_*` tests.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The zones served, by origin and file name.
const ZONES: &[&str] = &[
    "test",
    "2.0.192.in-addr.arpa",
    "zen.spamhaus.org",
    "dbl.spamhaus.org",
];

/// A running nsd.
pub struct Nsd {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The repository's test zone directory.
pub fn zones_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../identity/tests/zones")
        .canonicalize()
        .expect("crates/identity/tests/zones exists")
}

fn find_nsd() -> PathBuf {
    for p in ["/usr/sbin/nsd", "/usr/local/sbin/nsd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    if let Ok(out) = Command::new("which").arg("nsd").output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "nsd (Debian package `nsd`) is not installed: these tests need a real DNS server on \
         loopback. Run `bash scripts/install-deps` (or apt-get install nsd)."
    );
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now; nsd binds both.
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

impl Nsd {
    /// Starts nsd on a free loopback port and waits until it answers.
    pub fn start() -> Nsd {
        let nsd = find_nsd();
        let zones = zones_dir();
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let zone_copy = dir.path().join("zones");
            std::fs::create_dir(&zone_copy).expect("zone dir");
            for z in ZONES {
                std::fs::copy(
                    zones.join(format!("{z}.zone")),
                    zone_copy.join(format!("{z}.zone")),
                )
                .expect("copy zone file");
            }
            let d = dir.path().display();
            let mut conf = format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  username: \"\"\n  chroot: \"\"\n  \
                 zonesdir: \"{}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
                 zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
                 xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n  \
                 verbosity: 1\n  reuseport: no\n  tcp-count: 64\n\
                 remote-control:\n  control-enable: no\n",
                zone_copy.display()
            );
            for z in ZONES {
                conf.push_str(&format!(
                    "zone:\n  name: \"{z}\"\n  zonefile: \"{z}.zone\"\n"
                ));
            }
            let conf_path = dir.path().join("nsd.conf");
            std::fs::write(&conf_path, conf).expect("write nsd.conf");
            let child = Command::new(&nsd)
                .arg("-d")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", nsd.display()));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut server = Nsd { child, addr, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if probe(addr) {
                    return server;
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: port taken or bad config; retry on another port
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            last_err =
                std::fs::read_to_string(server.dir.path().join("nsd.log")).unwrap_or_default();
            drop(server);
        }
        panic!("nsd did not start on loopback; its log:\n{last_err}");
    }
}

impl Nsd {
    /// The text of a served zone file.
    pub fn zone_text(&self, zone: &str) -> String {
        std::fs::read_to_string(self.zone_path(zone)).expect("zone file")
    }

    /// Replaces a served zone file and makes nsd reload it (SIGHUP).
    pub fn set_zone(&self, zone: &str, text: &str) {
        std::fs::write(self.zone_path(zone), text).expect("write zone");
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(ok.success(), "cannot signal nsd");
    }

    fn zone_path(&self, zone: &str) -> PathBuf {
        self.dir.path().join("zones").join(format!("{zone}.zone"))
    }
}

/// Asks `ns.test A` and returns true on any answer.
fn probe(addr: SocketAddr) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ns", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}

impl Drop for Nsd {
    fn drop(&mut self) {
        // SIGTERM lets nsd stop its server and xfrd children; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
