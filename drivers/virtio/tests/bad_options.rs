//! Every option at zero, one, its limit and past it: a typed error that names the option, or a
//! device that works (a round trip through DMA and through bounce memory). Never a panic, a
//! hang or an unbounded allocation.

use mfio_conformance::{bounded, round_trip};
use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::{Options, VirtioBlk};
use std::time::Duration;

/// Brings the device up with `opts` and does a round trip larger than a bounce buffer; the
/// outcome as text, within 20 s.
fn outcome(opts: Options) -> Result<(), String> {
    bounded(Duration::from_secs(20), move || {
        let dev = VirtioBlk::new(VirtioBlkModel::new(ModelOptions::default()), &opts)
            .map_err(|e| e.to_string())?;
        let q = dev.queue(0).map_err(|e| e.to_string())?;
        round_trip(&q, 4096, 307_200)
    })
}

#[test]
fn every_option_at_its_edges_works_or_names_its_limit() {
    let d = Options::default;
    // (case, options, None: works; Some(text): the error says it)
    let cases: Vec<(&str, Options, Option<&str>)> = vec![
        ("queues 0 (all)", Options { queues: 0, ..d() }, None),
        ("queues max", Options { queues: u16::MAX, ..d() }, None),
        ("queue_size 0", Options { queue_size: 0, ..d() }, Some("queue_size is 0")),
        ("queue_size 1", Options { queue_size: 1, ..d() }, None),
        ("queue_size 3", Options { queue_size: 3, ..d() }, None),
        ("queue_size max", Options { queue_size: u16::MAX, ..d() }, None),
        ("max_transfer 0", Options { max_transfer: 0, ..d() }, Some("at least 512")),
        ("max_transfer 511", Options { max_transfer: 511, ..d() }, Some("at least 512")),
        ("max_transfer 512", Options { max_transfer: 512, ..d() }, None),
        ("max_transfer 513", Options { max_transfer: 513, ..d() }, None),
        ("max_transfer max", Options { max_transfer: usize::MAX, ..d() }, None),
        ("bounce_size 0", Options { bounce_size: 0, ..d() }, Some("bounce_size is 0")),
        ("bounce_size 4095", Options { bounce_size: 4095, ..d() }, Some("at least 4096")),
        ("bounce_size 4097", Options { bounce_size: 4097, ..d() }, None),
        ("bounce_size huge", Options { bounce_size: 1 << 45, ..d() }, Some("1024 MiB")),
        ("bounce_size overflows", Options { bounce_size: usize::MAX, ..d() }, Some("1024 MiB")),
        ("bounce_slots 0", Options { bounce_slots: 0, ..d() }, Some("bounce_slots is 0")),
        ("bounce_slots 1", Options { bounce_slots: 1, ..d() }, None),
        ("bounce_slots huge", Options { bounce_slots: 1 << 40, ..d() }, Some("1024 MiB")),
        ("refuse every feature", Options { refuse_features: u64::MAX, ..d() }, None),
    ];
    let mut wrong = Vec::new();
    for (name, opts, want) in cases {
        let got = outcome(opts);
        let ok = match (&got, want) {
            (Ok(()), None) => true,
            (Err(e), Some(w)) => e.contains(w) && e.contains("Options::"),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
