//! The driver against the strict model: errors per segment, timeouts, aborts, resets,
//! batching, splitting, zero copy, commands without data, threads.

use mfio::{
    block_on, BlockCommands, BlockDevice, ErrorKind, FromDevice, IoBackend, Origin, Packet, ReadAt,
    Window, WriteAt, Zeroes,
};
use mfio_conformance::Rng;
use mfio_nvme::model::{Injection, ModelConfig, NamespaceConfig, NvmeModel, Target};
use mfio_nvme::spec::{self, status};
use mfio_nvme::{Controller, ControllerOptions, IoQueue};
use mfio_pci::PciDevice;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

fn setup(
    cfg: ModelConfig,
    opts: ControllerOptions,
) -> (NvmeModel, Arc<Controller<NvmeModel>>, IoQueue<NvmeModel>) {
    let model = NvmeModel::new(cfg);
    let ctrl = Controller::new(model.clone(), opts).expect("bring-up on the model");
    let q = ctrl.io_queue(1).expect("an I/O queue");
    (model, ctrl, q)
}

fn basic() -> ModelConfig {
    ModelConfig {
        namespaces: vec![NamespaceConfig::new(16384, 512), NamespaceConfig::new(2048, 4096)],
        mdts: 5,
        ..ModelConfig::default()
    }
}

fn shadow() -> ControllerOptions {
    ControllerOptions { shadow_doorbells: true, ..ControllerOptions::default() }
}

fn fast_timeouts() -> ControllerOptions {
    ControllerOptions { io_timeout: Duration::from_millis(300), ..ControllerOptions::default() }
}

#[test]
fn bring_up_identifies_controller_and_namespaces() {
    let (model, ctrl, q) = setup(basic(), ControllerOptions::default());
    assert_eq!(ctrl.identify().mn, "mfio NVMe model");
    assert_eq!(ctrl.namespaces().len(), 2);
    assert_eq!((q.block_size(), q.capacity()), (512, 16384 * 512));
    let ns2 = ctrl.namespace(2).unwrap();
    assert_eq!((ns2.block_size, ns2.blocks), (4096, 2048));
    assert_eq!(ctrl.max_transfer(), 128 << 10, "MDTS 5 with 4 KiB pages");
    assert!(ctrl.io_queue(3).is_err(), "namespace 3 does not exist");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn a_media_error_fails_only_its_segment() {
    let opts = ControllerOptions { max_transfer: 4096, ..ControllerOptions::default() };
    let (model, _ctrl, q) = setup(basic(), opts);
    let data = Rng::new(1).bytes(64 * 512);
    q.write_all_blocking(0, &data).unwrap();
    model.inject(Injection::MediaError { nsid: 1, lba: 20 });
    let mut back = vec![0u8; 64 * 512];
    let e = q.read_all_blocking(0, &mut back).unwrap_err();
    // Commands are 8 blocks each: the one holding LBA 20 (LBAs 16..24) fails; 0..16 succeeded.
    assert_eq!(e.done, 16 * 512);
    assert_eq!(e.error.kind(), ErrorKind::Device);
    assert_eq!(e.error.origin(), Origin::Nvme);
    assert_eq!(
        e.error.status(),
        (u16::from(status::sct::MEDIA) << 8) | u16::from(status::media::UNRECOVERED_READ)
    );
    assert_eq!(back[..16 * 512], data[..16 * 512]);
    // The segments after the failed one still completed (partial success is per segment).
    assert_eq!(back[24 * 512..], data[24 * 512..]);
    let msg = e.to_string();
    assert!(msg.contains("SCT 0x2") && msg.contains("SC 0x81"), "{msg}");
}

#[test]
fn io_in_one_round_is_one_doorbell_and_large_io_is_split_at_mdts() {
    let (model, _ctrl, q) = setup(basic(), ControllerOptions::default());
    let qid = q.qid();
    let before = model.sq_doorbells(qid);
    let futs: Vec<_> = (0..32u64).map(|i| q.read_at(i * 4096, vec![0u8; 4096])).collect();
    for (r, _) in block_on(&q, futures::future::join_all(futs)) {
        r.unwrap();
    }
    assert_eq!(model.sq_doorbells(qid) - before, 1, "32 reads in one poll: one doorbell");
    let reads = model.io_commands(spec::io::READ);
    let (r, _) = block_on(&q, q.read_all(0, vec![0u8; 1 << 20]));
    r.unwrap();
    assert_eq!(model.io_commands(spec::io::READ) - reads, 8, "1 MiB at 128 KiB MDTS: 8 commands");
    assert!(q.stats().sq_doorbells < q.stats().submitted);
}

#[test]
fn dma_memory_is_zero_copy_and_heap_memory_bounces() {
    let (model, ctrl, q) = setup(basic(), ControllerOptions::default());
    let buf = ctrl.device().dma().alloc(64 << 10).unwrap();
    let data = Rng::new(3).bytes(64 << 10);
    buf.mem().copy_from_slice(0, &data);
    let (r, w) = block_on(&q, q.write_all(8192, Window::new(buf, 0, 64 << 10).unwrap()));
    r.unwrap();
    assert_eq!(q.stats().bounced, 0);
    assert_eq!(model.read_blocks(1, 16, 128), data);
    let mut back = vec![0u8; 64 << 10];
    q.read_all_blocking(8192, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(q.stats().bounced > 0, "heap memory is not mapped for the device");
    drop(w);
}

/// Writes `len` random bytes at `pos` from DMA memory at byte offset `offsets.0` of a buffer,
/// checks the model's media, reads them back into offset `offsets.1` and compares.
fn dma_round_trip(
    model: &NvmeModel,
    ctrl: &Controller<NvmeModel>,
    q: &IoQueue<NvmeModel>,
    pos: u64,
    len: usize,
    (w_off, r_off): (usize, usize),
) {
    let buf = ctrl.device().dma().alloc(len + 4096).unwrap();
    let data = Rng::new(len as u64).bytes(len);
    buf.mem().copy_from_slice(w_off, &data);
    let (r, buf) = block_on(q, q.write_all(pos, Window::new(buf, w_off, len).unwrap()));
    r.unwrap();
    assert_eq!(model.read_blocks(1, pos / 512, (len / 512) as u64), data, "on the media");
    let buf = buf.into_inner();
    buf.mem().fill(0, len + 4096, 0);
    let (r, buf) = block_on(q, q.read_all(pos, Window::new(buf, r_off, len).unwrap()));
    r.unwrap();
    let mut back = vec![0u8; len];
    buf.into_inner().mem().copy_to_slice(r_off, &mut back);
    assert_eq!(back, data, "read back");
}

/// DMA memory at an odd offset: PRPs cannot describe it (PRP1 must be dword aligned), so
/// without SGLs it bounces; with SGLs offered it stays zero copy, in Auto and Sgl modes alike.
#[test]
fn odd_offsets_in_dma_memory_use_sgls_when_offered_and_bounce_otherwise() {
    use mfio_nvme::DataPointer;
    for (sgl, mode, want_sgl) in [
        (false, DataPointer::Auto, false),
        (true, DataPointer::Auto, true),
        (true, DataPointer::Prp, false),
        (true, DataPointer::Sgl, true),
    ] {
        let cfg = ModelConfig { sgl, ..basic() };
        let opts = ControllerOptions { data_pointer: mode, ..ControllerOptions::default() };
        let (model, ctrl, q) = setup(cfg, opts);
        dma_round_trip(&model, &ctrl, &q, 4096, 40 << 10, (1, 3));
        let st = q.stats();
        if want_sgl {
            assert_eq!((st.sgl, st.bounced), (st.submitted, 0), "{mode:?}: {st:?}");
        } else {
            assert_eq!((st.sgl, st.bounced), (0, st.submitted), "{mode:?}: {st:?}");
        }
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }
    // Asking for SGLs from a controller without them is a clear error at bring-up.
    let opts = ControllerOptions { data_pointer: DataPointer::Sgl, ..ControllerOptions::default() };
    let err = Controller::new(NvmeModel::new(basic()), opts).err().expect("no SGLs offered");
    assert!(err.to_string().contains("DataPointer::Auto"), "{err}");
}

/// Memory scattered page by page (no-IOMMU without huge pages) at an odd offset, 2 MiB in one
/// command: 513 SGL descriptors over three chained segment pages, zero copy.
#[test]
fn scattered_memory_at_an_odd_offset_is_one_command_with_chained_sgl_segments() {
    let cfg = ModelConfig {
        scattered_dma: true,
        sgl: true,
        mdts: 9,
        namespaces: vec![NamespaceConfig::new(16384, 512)],
        ..ModelConfig::default()
    };
    let opts = ControllerOptions { max_transfer: 2 << 20, ..ControllerOptions::default() };
    let (model, ctrl, q) = setup(cfg, opts);
    dma_round_trip(&model, &ctrl, &q, 0, 2 << 20, (1, 1));
    let st = q.stats();
    assert_eq!((st.submitted, st.sgl, st.bounced), (2, 2, 0), "{st:?}");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn block_commands_conform_with_native_fua_and_deac() {
    for lba in [512, 4096] {
        let cfg = ModelConfig {
            namespaces: vec![NamespaceConfig::new((4 << 20) / lba, lba as u32)],
            ..basic()
        };
        let (model, _ctrl, q) = setup(cfg, ControllerOptions::default());
        let caps = q.capabilities();
        assert!(
            caps.fua && caps.volatile_cache && caps.discard && !caps.discard_zeroes,
            "{caps:?}"
        );
        assert!(caps.write_zeroes && caps.zeroes_unmap, "{caps:?}");
        mfio_conformance::check_commands(&q, 4 << 20).unwrap();
        let st = model.stats();
        // One FUA write (no flush after it), one Write Zeroes of each kind.
        assert_eq!((st.fua_writes, st.deac_zeroes), (1, 1), "{st:?}");
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let (model, _ctrl, q) = setup(basic(), ControllerOptions::default());
    q.write_all_blocking(0, &[0xabu8; 8192]).unwrap();
    q.flush_blocking().unwrap();
    assert_eq!(model.io_commands(spec::io::FLUSH), 1);
    q.write_zeroes_blocking(1024, 2048, Zeroes::Allocate).unwrap();
    let got = model.read_blocks(1, 0, 16);
    assert!(got[..1024].iter().all(|&b| b == 0xab));
    assert!(got[1024..3072].iter().all(|&b| b == 0));
    assert!(got[3072..].iter().all(|&b| b == 0xab));
    q.discard_blocking(4096, 4096).unwrap();
    assert!(model.read_blocks(1, 8, 8).iter().all(|&b| b == 0));
    assert_eq!(model.io_commands(spec::io::DATASET_MANAGEMENT), 1);
    // Ranges are checked before anything reaches the controller.
    assert_eq!(
        q.write_zeroes_blocking(100, 512, Zeroes::Allocate).unwrap_err().kind(),
        ErrorKind::Misaligned
    );
    assert_eq!(q.discard_blocking(q.capacity(), 512).unwrap_err().kind(), ErrorKind::OutOfRange);
    // A huge write zeroes is split into commands of at most 65536 blocks.
    let (model2, _c2, q2) = setup(
        ModelConfig { namespaces: vec![NamespaceConfig::new(200_000, 512)], ..basic() },
        ControllerOptions::default(),
    );
    q2.write_zeroes_blocking(0, 200_000 * 512, Zeroes::Allocate).unwrap();
    assert_eq!(model2.io_commands(spec::io::WRITE_ZEROES), 4);
}

#[test]
fn a_stray_completion_is_counted_and_ignored() {
    let (model, _ctrl, q) = setup(basic(), ControllerOptions::default());
    model.inject(Injection::BadCid { target: Target::io(), cid: 0x7777 });
    let mut buf = vec![0u8; 4096];
    q.read_all_blocking(0, &mut buf).unwrap();
    assert_eq!(q.stats().stray_completions, 1);
    q.read_all_blocking(0, &mut buf).unwrap();
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn a_held_command_times_out_and_is_aborted() {
    let (model, ctrl, q) = setup(basic(), fast_timeouts());
    model.inject(Injection::Hold(Target::io_opcode(spec::io::READ)));
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];
    let e = q.read_all_blocking(0, &mut buf).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Timeout, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(q.stats().timeouts, 1);
    assert_eq!(model.admin_commands(spec::admin::ABORT), 1);
    assert_eq!(ctrl.resets(), 0, "an abort was enough");
    // The queue still works.
    model.clear_injections();
    q.read_all_blocking(0, &mut buf).unwrap();
}

#[test]
fn a_lost_completion_ends_in_a_reset_and_the_queue_works_after() {
    let (model, ctrl, q) = setup(basic(), fast_timeouts());
    // Another queue, idle through the reset: its first command after it must not fail for it.
    let idle = ctrl.io_queue(1).unwrap();
    q.write_all_blocking(0, &[7u8; 4096]).unwrap();
    model.inject(Injection::LoseCompletion(Target::io_opcode(spec::io::READ)));
    let mut buf = vec![0u8; 4096];
    let e = q.read_all_blocking(0, &mut buf).unwrap_err();
    // The reset ended it, but what happened to it is that it timed out.
    assert_eq!(e.error.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(ctrl.resets(), 1);
    assert!(ctrl.is_enabled());
    model.clear_injections();
    q.read_all_blocking(0, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 4096], "data survives the reset");
    let mut other = vec![0u8; 4096];
    idle.read_all_blocking(0, &mut other).unwrap();
    assert_eq!(other, [7u8; 4096], "the idle queue re-creates its rings before its first command");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn a_fatal_controller_status_resets_and_every_segment_fails_clearly() {
    // With shadow doorbells too: the reset forgets them, and the driver gives them again.
    for shadow_doorbells in [false, true] {
        let opts = ControllerOptions { shadow_doorbells, ..fast_timeouts() };
        let (model, ctrl, q) = setup(basic(), opts);
        let futs: Vec<_> = (0..8u64).map(|i| q.read_all(i * 4096, vec![0u8; 4096])).collect();
        model.inject(Injection::Fatal);
        let results = block_on(&q, futures::future::join_all(futs));
        for (r, _) in &results {
            assert_eq!(r.unwrap_err().error.kind(), ErrorKind::Fatal);
        }
        assert_eq!(ctrl.resets(), 1);
        assert!(!model.is_fatal(), "the reset cleared CSTS.CFS");
        for i in 0..300 {
            q.read_all_blocking(i * 4096, &mut [0u8; 4096]).unwrap();
        }
        assert_eq!(ctrl.uses_shadow_doorbells(), shadow_doorbells);
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }
}

#[test]
fn dropping_a_future_with_a_held_command_waits_then_resets() {
    let (model, ctrl, q) = setup(basic(), fast_timeouts());
    model.inject(Injection::Hold(Target::io()));
    {
        let mut fut = pin!(q.read_at(0, vec![0u8; 4096]));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        q.poll_backend(&mut cx);
        // Dropped here: the drop drives the queue until the command is aborted.
    }
    assert_eq!(q.in_flight(), 0);
    assert_eq!(ctrl.resets(), 0);
    model.clear_injections();
}

#[test]
fn a_queue_dropped_with_a_stuck_command_resets_the_controller() {
    let (model, ctrl, q) = setup(basic(), fast_timeouts());
    model.inject(Injection::LoseCompletion(Target::io()));
    let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; 4096]));
    // Not bound to the queue (no driver), so the queue can go while the packet stays.
    let view = pkt.as_mut().start(None).unwrap();
    mfio::PacketIo::send_io(&q, 0, view);
    q.poll_backend(&mut Context::from_waker(Waker::noop()));
    drop(q);
    // The packet's segment was failed when the queue went, after the device was reset.
    assert!(pkt.is_idle());
    assert_eq!(
        block_on(&mfio::backends::MemoryBackend::new(0), pkt.as_ref().wait())
            .error
            .map(|e| e.kind()),
        Some(ErrorKind::Aborted)
    );
    assert_eq!(ctrl.resets(), 1);
    model.clear_injections();
    let q = ctrl.io_queue(1).unwrap();
    q.read_all_blocking(0, &mut [0u8; 512]).unwrap();
}

#[test]
fn more_requests_than_slots_wait_and_none_is_lost() {
    let opts =
        ControllerOptions { queue_depth: 4, bounce_buffers: 2, ..ControllerOptions::default() };
    let (_model, _ctrl, q) = setup(basic(), opts);
    let futs: Vec<_> = (0..100u64).map(|i| q.write_all(i * 512, vec![i as u8; 512])).collect();
    for (r, _) in block_on(&q, futures::future::join_all(futs)) {
        r.unwrap();
    }
    assert!(q.stats().max_pending > 0, "backpressure was exercised");
    let futs: Vec<_> = (0..100u64).map(|i| q.read_all(i * 512, vec![0u8; 512])).collect();
    for (i, (r, b)) in block_on(&q, futures::future::join_all(futs)).into_iter().enumerate() {
        r.unwrap();
        assert!(b.iter().all(|&x| x == i as u8), "request {i}");
    }
}

/// Shadow doorbells (the model offers them, as QEMU does): CQ heads go through memory, so
/// steady-state I/O writes the CQ head register only when the EventIdx asks; with them off,
/// the registers are used.
#[test]
fn shadow_doorbells_replace_cq_head_register_writes() {
    for shadow in [true, false] {
        let opts = ControllerOptions { shadow_doorbells: shadow, ..ControllerOptions::default() };
        let (model, ctrl, q) = setup(basic(), opts);
        assert_eq!(ctrl.uses_shadow_doorbells(), shadow);
        for round in 0..20u64 {
            let futs: Vec<_> = (0..100u64)
                .map(|i| q.write_all((round * 100 + i) * 512, vec![i as u8; 512]))
                .collect();
            for (r, _) in block_on(&q, futures::future::join_all(futs)) {
                r.unwrap();
            }
        }
        let mut back = vec![0u8; 512];
        q.read_all_blocking(1999 * 512, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 99));
        let (st, m) = (q.stats(), model.stats());
        let qid = usize::from(q.qid());
        if shadow {
            // The model leaves the CQ EventIdx at 0 while it is not waiting for room (as QEMU
            // does): the register is written only when the head passes it, once per lap.
            let laps = st.completed / 256 + 1;
            assert!(m.cq_doorbells[qid] <= laps, "one CQ head register write per lap: {st:?}");
            assert_eq!(st.cq_doorbells, m.cq_doorbells[qid]);
            assert!(m.shadow_heads > 0);
        } else {
            assert!(m.cq_doorbells[qid] > 0 && m.shadow_heads == 0, "{m:?}");
        }
        assert!(model.violations().is_empty(), "{:?}", model.violations());
    }
}

/// A queue ID used again after its queue was dropped: the new queue starts from zero in the
/// shadow page too (a stale shadow head from the old queue would pass the new CQ's tail).
#[test]
fn a_queue_id_reused_after_drop_starts_with_fresh_shadow_doorbells() {
    let (model, ctrl, q) = setup(basic(), shadow());
    let qid = q.qid();
    let mut buf = vec![0u8; 4096];
    for i in 0..37 {
        q.read_all_blocking(i * 4096, &mut buf).unwrap();
    }
    drop(q);
    let q = ctrl.io_queue(2).unwrap();
    assert_eq!(q.qid(), qid, "the same queue ID again");
    for i in 0..5 {
        q.read_all_blocking(i * 4096, &mut buf).unwrap();
    }
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

/// A CQ that fills up (bogus CQEs on a tiny queue): the model sets the CQ EventIdx to its head,
/// and the driver must then write the head register, or the held CQEs never come.
#[test]
fn a_full_cq_with_shadow_doorbells_asks_for_the_head_register() {
    let opts = ControllerOptions { queue_depth: 8, ..shadow() };
    let (model, ctrl, q) = setup(basic(), opts);
    assert!(ctrl.uses_shadow_doorbells());
    for _ in 0..7 {
        model.inject(Injection::BadCid { target: Target::io(), cid: 0x7777 });
    }
    let futs: Vec<_> = (0..7u64).map(|i| q.read_at(i * 4096, vec![0u8; 4096])).collect();
    for (r, _) in block_on(&q, futures::future::join_all(futs)) {
        r.unwrap();
    }
    let m = model.stats();
    assert!(m.cq_full_holds > 0, "the CQ filled: {m:?}");
    assert!(m.cq_doorbells[usize::from(q.qid())] > 0, "the driver rang the head register");
    assert_eq!((q.stats().stray_completions, q.stats().timeouts), (7, 0));
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn queues_on_several_threads() {
    let (model, ctrl, q0) = setup(basic(), ControllerOptions::default());
    drop(q0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let ctrl = ctrl.clone();
            s.spawn(move || {
                let q = ctrl.io_queue(1).unwrap();
                let mut rng = Rng::new(t);
                for i in 0..50u64 {
                    let pos = (t * 1024 + i * 16) * 512;
                    let data = rng.bytes(8 * 512);
                    q.write_all_blocking(pos, &data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    q.read_all_blocking(pos, &mut back).unwrap();
                    assert_eq!(back, data);
                }
            });
        }
    });
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn errors_name_the_problem() {
    // Bad bring-up: the model refuses nothing, so check the error type's messages directly.
    let e = mfio_nvme::NvmeError::NoNamespace(9);
    assert!(e.to_string().contains("namespace 9"));
    let e = mfio_nvme::NvmeError::NotContiguous(16384);
    assert!(e.to_string().contains("huge pages"));
}

#[test]
fn the_volatile_cache_loses_unflushed_writes_in_a_power_cut_and_keeps_flushed_and_fua_ones() {
    let cfg = ModelConfig { namespaces: vec![NamespaceConfig::new(4096, 512)], ..basic() };
    let (model, ctrl, q) = setup(cfg.clone(), ControllerOptions::default());
    assert!(q.capabilities().volatile_cache && q.capabilities().fua);
    q.write_all_blocking(0, &[1; 1024]).unwrap();
    q.flush_blocking().unwrap();
    q.write_all_blocking(0, &[2; 512]).unwrap(); // over a flushed block, not flushed itself
    q.write_all_blocking(4096, &[3; 2048]).unwrap();
    block_on(&q, q.write_all_fua(8192, vec![4u8; 512])).0.unwrap();
    q.write_zeroes_blocking(512, 512, Zeroes::Allocate).unwrap();
    let mut now = [0u8; 1024];
    q.read_all_blocking(0, &mut now).unwrap();
    assert_eq!((now[0], now[600]), (2, 0), "reads see the cache");
    assert_eq!(model.cached_blocks(), 1 + 4 + 1, "FUA skipped the cache");
    // The cut keeps one of the four blocks at 4096: the write tears.
    let media = model.power_cut(|nsid, lba| nsid == 1 && lba == 9);
    assert!(q.read_all_blocking(0, &mut now).is_err(), "the old controller is gone");
    drop((q, ctrl));
    let model = NvmeModel::with_media(cfg, media);
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).unwrap();
    let q = ctrl.io_queue(1).unwrap();
    let mut back = vec![0u8; 8704];
    q.read_all_blocking(0, &mut back).unwrap();
    assert!(back[..1024].iter().all(|&b| b == 1), "flushed data survives, later writes do not");
    let torn: Vec<u8> = (8..12).map(|b| back[b * 512]).collect();
    assert_eq!(torn, [0, 3, 0, 0], "only the kept block of the torn write");
    assert!(back[8192..].iter().all(|&b| b == 4), "the FUA write is durable");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}
