//! Reflected-secret redaction of a response body, against copying the same
//! body (the least any response path does before the guest sees it).

use airlock::outbound::Redactor;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn redact(c: &mut Criterion) {
    let mut redactor = Redactor::default();
    for secret in [
        "tok_LIVE_9f8e7d6c5b4a3210",
        "whsec_0123456789abcdefABCDEF",
        "robot-password-77",
    ] {
        redactor.add(secret.as_bytes());
    }
    // 1 MiB of JSON-ish text; one variant also echoes a secret 16 times.
    let clean: Vec<u8> = br#"{"id":12345,"title":"Disk almost full","tags":["ops","db"]},"#
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    // The same size of JSON dense with every escape the redactor decodes
    // (JSON `\/` and `\u`, an HTML entity, percent- and form-encoding,
    // `=` of quoted-printable): every decoded view, one and two carriers
    // deep, is built and searched.
    let escaped: Vec<u8> =
        br#"{"id":12345,"url":"https:\/\/x.example\/a?b=1\u0026c=%20d+e","note":"line\nnext &amp; more"},"#
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
    let mut echoing = clean.clone();
    for i in 0..16 {
        let at = i * (echoing.len() / 16);
        echoing[at..at + 25].copy_from_slice(b"tok_LIVE_9f8e7d6c5b4a3210");
    }

    let mut group = c.benchmark_group("redact-1MiB");
    group.throughput(Throughput::Bytes(clean.len() as u64));
    group.bench_function("baseline-copy", |b| b.iter(|| black_box(black_box(&clean).to_vec())));
    group.bench_function("redact-clean", |b| {
        b.iter(|| black_box(redactor.redact(black_box(&clean)).len()))
    });
    group.bench_function("redact-echoing", |b| {
        b.iter(|| black_box(redactor.redact(black_box(&echoing)).len()))
    });
    group.bench_function("redact-escaped", |b| {
        b.iter(|| black_box(redactor.redact(black_box(&escaped)).len()))
    });
    group.finish();
}

criterion_group!(benches, redact);
criterion_main!(benches);
