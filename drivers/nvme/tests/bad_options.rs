//! Every option at zero, one, its limit and past it: a typed error that names the option, or a
//! controller that works (a round trip through DMA and through bounce memory). Never a panic,
//! a hang or an unbounded allocation.

use mfio_conformance::{bounded, round_trip};
use mfio_nvme::model::{ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions};
use std::time::Duration;

fn model() -> NvmeModel {
    NvmeModel::new(ModelConfig {
        namespaces: vec![NamespaceConfig::new(4096, 512)],
        mdts: 5,
        ..ModelConfig::default()
    })
}

/// Brings a controller up with `opts` and does a round trip larger than a page; the outcome
/// as text, within 20 s.
fn outcome(opts: ControllerOptions) -> Result<(), String> {
    bounded(Duration::from_secs(20), move || {
        let ctrl = Controller::new(model(), opts).map_err(|e| e.to_string())?;
        let q = ctrl.io_queue(1).map_err(|e| e.to_string())?;
        round_trip(&q, 4096, 307_200)
    })
}

#[test]
fn every_option_at_its_edges_works_or_names_its_limit() {
    let d = ControllerOptions::default;
    let day = Duration::from_secs(24 * 3600);
    // (case, options, None: works; Some(text): the error says it)
    let cases: Vec<(&str, ControllerOptions, Option<&str>)> = vec![
        ("io_queues 0", ControllerOptions { io_queues: 0, ..d() }, Some("io_queues is 0")),
        ("io_queues 1", ControllerOptions { io_queues: 1, ..d() }, None),
        ("io_queues max", ControllerOptions { io_queues: u16::MAX, ..d() }, None),
        ("queue_depth 0", ControllerOptions { queue_depth: 0, ..d() }, Some("at least 2 entries")),
        ("queue_depth 1", ControllerOptions { queue_depth: 1, ..d() }, Some("at least 2 entries")),
        ("queue_depth 2", ControllerOptions { queue_depth: 2, ..d() }, None),
        ("queue_depth max", ControllerOptions { queue_depth: u16::MAX, ..d() }, None),
        ("max_transfer 0", ControllerOptions { max_transfer: 0, ..d() }, Some("at least 4096")),
        (
            "max_transfer 4095",
            ControllerOptions { max_transfer: 4095, ..d() },
            Some("at least 4096"),
        ),
        ("max_transfer 4096", ControllerOptions { max_transfer: 4096, ..d() }, None),
        ("max_transfer 4097", ControllerOptions { max_transfer: 4097, ..d() }, None),
        ("max_transfer max", ControllerOptions { max_transfer: usize::MAX, ..d() }, None),
        (
            "bounce_buffers 0",
            ControllerOptions { bounce_buffers: 0, ..d() },
            Some("bounce_buffers is 0"),
        ),
        ("bounce_buffers 1", ControllerOptions { bounce_buffers: 1, ..d() }, None),
        ("bounce_buffers huge", ControllerOptions { bounce_buffers: 1 << 40, ..d() }, None),
        ("bounce_size 0", ControllerOptions { bounce_size: 0, ..d() }, Some("bounce_size is 0")),
        ("bounce_size 4095", ControllerOptions { bounce_size: 4095, ..d() }, Some("at least 4096")),
        ("bounce_size 4097", ControllerOptions { bounce_size: 4097, ..d() }, None),
        ("bounce_size huge", ControllerOptions { bounce_size: 1 << 45, ..d() }, None),
        (
            "admin_timeout 0",
            ControllerOptions { admin_timeout: Duration::ZERO, ..d() },
            Some("1 ms to 24 hours"),
        ),
        (
            "admin_timeout max",
            ControllerOptions { admin_timeout: Duration::MAX, ..d() },
            Some("admin_timeout is"),
        ),
        ("admin_timeout a day", ControllerOptions { admin_timeout: day, ..d() }, None),
        (
            "io_timeout 0",
            ControllerOptions { io_timeout: Duration::ZERO, ..d() },
            Some("io_timeout is 0ns"),
        ),
        (
            "io_timeout 1 ms",
            ControllerOptions { io_timeout: Duration::from_millis(1), ..d() },
            None,
        ),
        (
            "io_timeout max",
            ControllerOptions { io_timeout: Duration::MAX, ..d() },
            Some("io_timeout is"),
        ),
        ("io_timeout a day", ControllerOptions { io_timeout: day, ..d() }, None),
    ];
    let mut wrong = Vec::new();
    for (name, opts, want) in cases {
        let got = outcome(opts);
        let ok = match (&got, want) {
            (Ok(()), None) => true,
            (Err(e), Some(w)) => e.contains(w) && e.contains("ControllerOptions::"),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
