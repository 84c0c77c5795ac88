//! How cheap the pure receiver model is per call, for the flight simulator
//! (`cargo bench -p mxpace-sim --bench model`). One iteration = one whole SMTP
//! transaction (connect, EHLO, MAIL, RCPT, DATA, end of DATA, close) = 7 calls.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mxpace_sim::{Profile, Receiver};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

fn transaction(mx: &mut Receiver, now: Duration, ip: IpAddr) -> u16 {
    let Ok((s, _)) = mx.connect(now, ip, "127.0.0.1:25") else {
        return 421;
    };
    mx.ehlo(now, s, "client.test");
    mx.mail_from(now, s, "a@sender.test");
    let code = mx.rcpt(now, s, "b@contoso.test").code;
    if code == 250 {
        mx.data(now, s);
        mx.data_end(now, s, Some("<id@sender.test>"));
    }
    mx.close(now, s);
    code
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("receiver_model");
    group.throughput(Throughput::Elements(7));
    for name in ["accept", "microsoft"] {
        let mut mx = Receiver::new(Profile::builtin(name).unwrap(), 1);
        let ips: Vec<IpAddr> = (2..=9)
            .map(|i| format!("127.0.0.{i}").parse().unwrap())
            .collect();
        let mut t = Duration::ZERO;
        let mut i = 0usize;
        group.bench_function(format!("{name}_transaction"), |b| {
            b.iter(|| {
                // 10 ms of virtual time per transaction over 8 IPs: the microsoft profile
                // both accepts and throttles, so both paths are measured.
                t += Duration::from_millis(10);
                i = i.wrapping_add(1);
                black_box(transaction(&mut mx, t, ips[i % ips.len()]))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
