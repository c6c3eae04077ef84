//! Record encoding and decoding: the per-event CPU cost on the hot path.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tally_benches::sample_click;

fn bench(c: &mut Criterion) {
    let event = sample_click(42);
    let bytes = tally_model::encode(&event).unwrap_or_default();
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_click", |b| b.iter(|| tally_model::encode(black_box(&event))));
    let mut buf = Vec::with_capacity(512);
    g.bench_function("encode_click_reuse_buffer", |b| {
        b.iter(|| {
            buf.clear();
            tally_model::encode_into(black_box(&event), &mut buf)
        })
    });
    // The edge's path: the click's fields borrowed, postcard's format written by hand (the
    // same bytes as the serde encoding above).
    if let tally_model::Event::Click(click) = &event {
        let view = tally_model::ClickView::from(click);
        g.bench_function("encode_click_view_reuse_buffer", |b| {
            b.iter(|| {
                buf.clear();
                tally_model::encode_click_into(black_box(&view), [7; tally_model::record::SALT_LEN], &mut buf)
            })
        });
    }
    g.bench_function("decode_click", |b| b.iter(|| tally_model::decode(black_box(&bytes))));
    // In place, as attribution reads clicks: same checks, no allocation.
    g.bench_function("decode_view_click", |b| b.iter(|| tally_model::decode_view(black_box(&bytes))));
    g.bench_function("click_id_mint_and_encode", |b| {
        b.iter(|| tally_model::ClickId::mint(black_box(1_700_000_000_000), 1).encode())
    });
    g.finish();
    println!("encoded click size: {} bytes", bytes.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
