//! The model's I/O path in null mode allocates nothing in steady state, so a driver benchmark
//! that counts allocations per I/O counts only the driver's. (Its own test binary: the
//! counting allocator is global.)

use mfio_dma::PagePolicy;
use mfio_nvme::model::{ModelConfig, NvmeModel};
use mfio_nvme::spec::{self, regs, Cc, Command, Completion};
use mfio_pci::PciDevice;

#[global_allocator]
static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;

#[test]
fn null_io_path_does_not_allocate() {
    let m = NvmeModel::new(ModelConfig { null_io: true, ..ModelConfig::default() });
    m.set_bus_master(true).unwrap();
    let alloc = |n| m.dma().alloc_with(n, PagePolicy::SmallOnly).unwrap();
    let (asq, acq, sq, cq, data, list) =
        (alloc(4096), alloc(4096), alloc(4096), alloc(4096), alloc(65536), alloc(4096));
    m.write32(0, regs::AQA, (15 << 16) | 15);
    m.write64(0, regs::ASQ, asq.iova().0);
    m.write64(0, regs::ACQ, acq.iova().0);
    m.write32(0, regs::CC, Cc::enabled_nvm().0);
    let mut admin_tail = 0;
    let mut admin = |cmd: Command| {
        asq.mem().copy_from_slice(admin_tail * 64, &cmd.to_bytes());
        admin_tail += 1;
        m.write32(0, regs::sq_tail_doorbell(0, 0), admin_tail as u32);
        m.write32(0, regs::cq_head_doorbell(0, 0), admin_tail as u32);
    };
    admin(Command { cdw10: 7, cdw11: 0, ..Command::new(spec::admin::SET_FEATURES, 0) });
    let create =
        |op, prp1, cdw11| Command { prp1, cdw10: (63 << 16) | 1, cdw11, ..Command::new(op, 0) };
    admin(create(spec::admin::CREATE_CQ, cq.iova().0, 1));
    admin(create(spec::admin::CREATE_SQ, sq.iova().0, (1 << 16) | 1));
    for i in 0..15 {
        list.mem().write_le64(i * 8, data.iova().0 + 4096 * (i as u64 + 1));
    }

    let (mut tail, mut head, mut phase) = (0u32, 0u32, true);
    let mut run = |n: u32| {
        for i in 0..n {
            // Batches of 8 reads: 4 KiB (PRP1) and 64 KiB (PRP list) alternately.
            for j in 0..8u32 {
                let big = (i + j) % 2 == 0;
                let nlb = if big { 128 } else { 8 };
                let mut c = Command::rw(spec::io::READ, 1, u64::from(j) * 128, nlb);
                c.cid = j as u16;
                c.prp1 = data.iova().0;
                c.prp2 = if big { list.iova().0 } else { 0 };
                sq.mem().copy_from_slice(tail as usize * 64, &c.to_bytes());
                tail = (tail + 1) % 64;
            }
            m.write32(0, regs::sq_tail_doorbell(1, 0), tail);
            for _ in 0..8 {
                let o = head as usize * 16;
                let cq = cq.mem();
                let c = Completion::from_dwords([
                    cq.read_le32(o),
                    cq.read_le32(o + 4),
                    cq.read_le32(o + 8),
                    cq.read_le32(o + 12),
                ]);
                assert_eq!(c.phase(), phase, "inline completion");
                assert!(c.status().is_success());
                head = (head + 1) % 64;
                if head == 0 {
                    phase = !phase;
                }
            }
            m.write32(0, regs::cq_head_doorbell(1, 0), head);
        }
    };
    run(16); // warm up: scratch vectors reach their size
    let before = mfio::alloc_count::allocations();
    run(100);
    let allocs = mfio::alloc_count::allocations() - before;
    assert_eq!(allocs, 0, "allocations in 800 null-mode I/Os");
    assert_eq!(m.io_commands(spec::io::READ), 116 * 8);
}
