//! Registers, bring-up, Identify, features, queue creation and deletion, log pages.

use mfio_pci::{PciDevice, COMMAND_BUS_MASTER, COMMAND_MEMORY, CONFIG_COMMAND};

use super::*;
use crate::model::{NamespaceConfig, ViolationKind, BAR0_SIZE};
use crate::spec::status::{generic as g, specific};
use crate::spec::{admin, cns, feature, Cap, IdentifyController, IdentifyNamespace};

#[test]
fn registers_after_reset_and_enable() {
    let m = NvmeModel::new(ModelConfig { mqes: 255, ..ModelConfig::default() });
    let cap = Cap(m.read64(0, regs::CAP));
    assert_eq!(cap.max_queue_entries(), 256);
    assert!(cap.contiguous_queues_required() && cap.nvm_command_set());
    assert_eq!(
        (cap.timeout_ms(), cap.dstrd(), cap.mps_min(), cap.mps_max()),
        (10_000, 0, 4096, 4096)
    );
    assert_eq!(m.read32(0, regs::CAP), cap.0 as u32, "32-bit halves of CAP");
    assert_eq!(m.read32(0, 4), (cap.0 >> 32) as u32);
    assert_eq!(m.read32(0, regs::VS), 0x0001_0400);
    assert_eq!(m.read32(0, regs::CSTS), 0);
    assert_eq!(m.bar_len(0), Some(BAR0_SIZE));
    assert_eq!(m.bar_len(1), None);

    let h = Host::new(ModelConfig::default());
    assert_eq!(h.m.read32(0, regs::CC), Cc::enabled_nvm().0);
    // Shutdown notification completes at once and RDY stays.
    h.m.write32(0, regs::CC, Cc::enabled_nvm().0 | Cc::SHN_NORMAL);
    let csts = Csts(h.m.read32(0, regs::CSTS));
    assert_eq!((csts.shst(), csts.rdy()), (2, true));
    // Disable: RDY and SHST clear, queues are gone.
    h.m.write32(0, regs::CC, 0);
    assert_eq!(h.m.read32(0, regs::CSTS), 0);
    assert!(h.m.violations().is_empty());
}

#[test]
fn config_space_identity_bar_sizing_and_command_register() {
    let m = NvmeModel::new(ModelConfig::default());
    assert_eq!(m.config_read16(0).unwrap(), 0x1b36);
    assert_eq!(m.config_read16(2).unwrap(), 0x0010);
    assert_eq!(m.config_read32(8).unwrap() >> 8, 0x01_08_02);
    assert_eq!(m.config_read16(CONFIG_COMMAND).unwrap(), COMMAND_MEMORY);
    m.config_write32(0x10, u32::MAX).unwrap();
    assert_eq!(m.config_read32(0x10).unwrap(), !(BAR0_SIZE as u32 - 1) | 4, "BAR sizing");
    m.set_bus_master(true).unwrap();
    assert_eq!(m.config_read16(CONFIG_COMMAND).unwrap(), COMMAND_MEMORY | COMMAND_BUS_MASTER);
    m.config_write16(0, 0xffff).unwrap();
    assert_eq!(m.config_read16(0).unwrap(), 0x1b36, "vendor ID is read-only");
    // Memory decoding off: registers read as all ones (a master abort).
    m.config_write16(CONFIG_COMMAND, 0).unwrap();
    assert_eq!(m.read32(0, regs::VS), u32::MAX);
}

#[test]
fn bad_enable_configuration_sets_cfs_and_is_recorded() {
    let m = NvmeModel::new(no_panic_config());
    m.set_bus_master(true).unwrap();
    let q = alloc(&m, 8192);
    m.write32(0, regs::AQA, (15 << 16) | 15);
    m.write64(0, regs::ASQ, q.iova().0 + 64); // not page aligned
    m.write64(0, regs::ACQ, q.iova().0 + 4096);
    m.write32(0, regs::CC, Cc::enabled_nvm().0);
    let csts = Csts(m.read32(0, regs::CSTS));
    assert!(csts.cfs() && !csts.rdy());
    let v = m.violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, ViolationKind::Config);
    assert!(v[0].message.contains("ASQ"), "{}", v[0].message);

    // Reset, fix ASQ, but ask for 32-byte SQ entries.
    m.write32(0, regs::CC, 0);
    assert_eq!(m.read32(0, regs::CSTS), 0, "reset clears CFS");
    m.write64(0, regs::ASQ, q.iova().0);
    m.write32(0, regs::CC, Cc::EN | (5 << 16) | (4 << 20));
    assert!(Csts(m.read32(0, regs::CSTS)).cfs());
    assert!(m.violations()[1].message.contains("IOSQES"));

    // Queues outside mapped memory.
    m.write32(0, regs::CC, 0);
    m.write64(0, regs::ASQ, 0x1000);
    m.write32(0, regs::CC, Cc::enabled_nvm().0);
    assert!(Csts(m.read32(0, regs::CSTS)).cfs());
    m.write32(0, regs::CC, 0);
    m.write64(0, regs::ASQ, q.iova().0);
    m.write32(0, regs::CC, Cc::enabled_nvm().0);
    assert!(Csts(m.read32(0, regs::CSTS)).rdy());
    assert_eq!(m.violations().len(), 3);
}

#[test]
fn identify_controller_namespaces_and_list() {
    let cfg = ModelConfig {
        namespaces: vec![NamespaceConfig::new(1000, 512), NamespaceConfig::new(300, 4096)],
        mdts: 3,
        sgl: true,
        ..ModelConfig::default()
    };
    let mut h = Host::new(cfg);
    let (c, data) =
        h.admin_read(Command { cdw10: cns::CONTROLLER, ..Command::new(admin::IDENTIFY, 0) }, 4096);
    assert_ok(&c);
    let id = IdentifyController::parse(&data);
    assert_eq!((id.vid, id.mn.as_str(), id.mdts, id.nn), (0x1b36, "mfio NVMe model", 3, 2));
    assert_eq!(id.oncs, IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES);
    assert_ne!(id.oacs & IdentifyController::OACS_DOORBELL_BUFFER_CONFIG, 0, "offered by default");
    assert_eq!((id.sqes, id.cqes, id.vwc, id.elpe), (0x66, 0x44, 1, 63));
    assert!(id.supports_sgl());
    assert_eq!(id.max_transfer(4096), Some(32768));

    for (nsid, blocks, bs) in [(1, 1000, 512), (2, 300, 4096)] {
        let (c, data) = h.admin_read(
            Command { cdw10: cns::NAMESPACE, ..Command::new(admin::IDENTIFY, nsid) },
            4096,
        );
        assert_ok(&c);
        let ns = IdentifyNamespace::parse(&data);
        assert_eq!((ns.nsze, ns.ncap, ns.block_size()), (blocks, blocks, bs));
    }
    let (c, _) =
        h.admin_read(Command { cdw10: cns::NAMESPACE, ..Command::new(admin::IDENTIFY, 3) }, 4096);
    assert_status(&c, sct::GENERIC, g::INVALID_NAMESPACE);

    let (c, data) = h.admin_read(
        Command { cdw10: cns::ACTIVE_NAMESPACES, ..Command::new(admin::IDENTIFY, 0) },
        4096,
    );
    assert_ok(&c);
    assert_eq!(&data[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, data) = h.admin_read(
        Command { cdw10: cns::ACTIVE_NAMESPACES, ..Command::new(admin::IDENTIFY, 1) },
        4096,
    );
    assert_eq!(&data[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let c = h.admin_cmd(Command { cdw10: 0x55, ..Command::new(admin::IDENTIFY, 0) });
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);

    // Identify into a buffer at an offset: PRP1 with an offset, PRP2 the next page.
    let buf = alloc(&h.m, 8192);
    let c = h.admin_cmd(Command {
        cdw10: cns::CONTROLLER,
        prp1: buf.iova().0 + 512,
        prp2: buf.iova().0 + 4096,
        ..Command::new(admin::IDENTIFY, 0)
    });
    assert_ok(&c);
    assert_eq!(buf.mem().read_le16(512), 0x1b36);
    // PRP2 with an offset when it must be a page pointer.
    let c = h.admin_cmd(Command {
        cdw10: cns::CONTROLLER,
        prp1: buf.iova().0 + 512,
        prp2: buf.iova().0 + 4096 + 8,
        ..Command::new(admin::IDENTIFY, 0)
    });
    assert_status(&c, sct::GENERIC, g::INVALID_PRP_OFFSET);
}

#[test]
fn features_number_of_queues_and_cache() {
    let m = NvmeModel::new(ModelConfig { max_queues: 4, ..ModelConfig::default() });
    drop(m);
    let mut h = Host::new(ModelConfig { max_queues: 4, ..ModelConfig::default() });
    // Host::new asked for 8 pairs: 4 granted.
    let c = h.admin_cmd(Command {
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        ..Command::new(admin::GET_FEATURES, 0)
    });
    assert_eq!(c.dw0, (3 << 16) | 3);
    let c = h.admin_cmd(Command {
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        cdw11: 1 << 16,
        ..Command::new(admin::SET_FEATURES, 0)
    });
    assert_eq!(c.dw0, (1 << 16), "1 SQ, 2 CQs (0-based)");
    let c = h.admin_cmd(Command {
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        cdw11: 0xffff,
        ..Command::new(admin::SET_FEATURES, 0)
    });
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);

    let mut q = h.create_pair(1, 8);
    let c = h.admin_cmd(Command {
        cdw10: feature::NUMBER_OF_QUEUES as u32,
        ..Command::new(admin::SET_FEATURES, 0)
    });
    assert_status(&c, sct::GENERIC, 0x0c); // command sequence error: queues exist
    let c = h.io_cmd(&mut q, Command::new(spec::io::FLUSH, 1));
    assert_ok(&c);

    let c = h.admin_cmd(Command {
        cdw10: feature::VOLATILE_WRITE_CACHE as u32,
        ..Command::new(admin::SET_FEATURES, 0)
    });
    assert_ok(&c);
    let c = h.admin_cmd(Command {
        cdw10: feature::VOLATILE_WRITE_CACHE as u32,
        ..Command::new(admin::GET_FEATURES, 0)
    });
    assert_eq!(c.dw0, 0, "write cache turned off");
    let c = h.admin_cmd(Command {
        cdw10: feature::VOLATILE_WRITE_CACHE as u32 | 1 << 8,
        ..Command::new(admin::GET_FEATURES, 0)
    });
    assert_eq!(c.dw0, 1, "default value");
    let c = h.admin_cmd(Command {
        cdw10: feature::ARBITRATION as u32,
        cdw11: 0x0302_0103,
        ..Command::new(admin::SET_FEATURES, 0)
    });
    assert_ok(&c);
    let c = h.admin_cmd(Command {
        cdw10: feature::ARBITRATION as u32,
        ..Command::new(admin::GET_FEATURES, 0)
    });
    assert_eq!(c.dw0, 0x0302_0103);
    let c = h.admin_cmd(Command { cdw10: 0x7e, ..Command::new(admin::GET_FEATURES, 0) });
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);
    // Doorbell Buffer Config: null or unaligned pages are an invalid field (unmapped ones are
    // a driver bug, a violation).
    let c = h.admin_cmd(Command::new(admin::DOORBELL_BUFFER_CONFIG, 0));
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);
    let pages = alloc(&h.m, 8192);
    let base = pages.iova().0;
    let dbc = |prp1, prp2| Command { prp1, prp2, ..Command::new(admin::DOORBELL_BUFFER_CONFIG, 0) };
    assert_status(&h.admin_cmd(dbc(base + 8, base + 4096)), sct::GENERIC, g::INVALID_FIELD);
    assert_ok(&h.admin_cmd(dbc(base, base + 4096)));
}

#[test]
fn doorbell_buffer_config_is_refused_when_not_offered() {
    let mut h = Host::new(ModelConfig { shadow_doorbells: false, ..ModelConfig::default() });
    let pages = alloc(&h.m, 8192);
    let base = pages.iova().0;
    let c = h.admin_cmd(Command {
        prp1: base,
        prp2: base + 4096,
        ..Command::new(admin::DOORBELL_BUFFER_CONFIG, 0)
    });
    assert_status(&c, sct::GENERIC, g::INVALID_OPCODE);
}

#[test]
fn queue_creation_and_deletion_rules() {
    let mut h = Host::new(ModelConfig { max_queues: 2, mqes: 63, ..ModelConfig::default() });
    let buf = alloc(&h.m, 65536);
    let iova = buf.iova().0;
    let cq = |qid: u32, entries: u32, cdw11: u32, prp1: u64| Command {
        prp1,
        cdw10: ((entries - 1) << 16) | qid,
        cdw11,
        ..Command::new(admin::CREATE_CQ, 0)
    };
    let sq = |qid: u32, entries: u32, cqid: u32, prp1: u64| Command {
        prp1,
        cdw10: ((entries - 1) << 16) | qid,
        cdw11: (cqid << 16) | 1,
        ..Command::new(admin::CREATE_SQ, 0)
    };
    let spec_err = |c: &Completion, sc| assert_status(c, sct::COMMAND_SPECIFIC, sc);
    spec_err(&h.admin_cmd(cq(3, 8, 1, iova)), specific::INVALID_QID); // only 2 granted
    spec_err(&h.admin_cmd(cq(0, 8, 1, iova)), specific::INVALID_QID);
    spec_err(&h.admin_cmd(cq(1, 65, 1, iova)), specific::INVALID_QUEUE_SIZE); // MQES 63
    assert_status(&h.admin_cmd(cq(1, 8, 0, iova)), sct::GENERIC, g::INVALID_FIELD); // PC = 0
    assert_status(&h.admin_cmd(cq(1, 8, 1, iova + 16)), sct::GENERIC, g::INVALID_PRP_OFFSET);
    spec_err(&h.admin_cmd(cq(1, 8, 3 | 65 << 16, iova)), 0x08); // vector 65: the table has 65
    spec_err(&h.admin_cmd(sq(1, 8, 1, iova + 4096)), specific::INVALID_CQ);
    assert_ok(&h.admin_cmd(cq(1, 64, 3, iova))); // interrupts on, vector 0: allowed
    spec_err(&h.admin_cmd(cq(1, 8, 1, iova)), specific::INVALID_QID); // exists
    assert_ok(&h.admin_cmd(sq(1, 64, 1, iova + 4096)));
    assert_ok(&h.admin_cmd(sq(2, 64, 1, iova + 8192))); // two SQs on one CQ

    let del = |op: u8, qid: u32| Command { cdw10: qid, ..Command::new(op, 0) };
    spec_err(&h.admin_cmd(del(admin::DELETE_CQ, 1)), specific::INVALID_QUEUE_DELETION);
    assert_ok(&h.admin_cmd(del(admin::DELETE_SQ, 1)));
    spec_err(&h.admin_cmd(del(admin::DELETE_SQ, 1)), specific::INVALID_QID);
    spec_err(&h.admin_cmd(del(admin::DELETE_CQ, 1)), specific::INVALID_QUEUE_DELETION);
    assert_ok(&h.admin_cmd(del(admin::DELETE_SQ, 2)));
    assert_ok(&h.admin_cmd(del(admin::DELETE_CQ, 1)));
    spec_err(&h.admin_cmd(del(admin::DELETE_CQ, 0)), specific::INVALID_QID);
    assert!(h.m.violations().is_empty());
}

#[test]
fn queue_in_unmapped_memory_is_a_violation() {
    let mut h = Host::new(no_panic_config());
    let c = h.admin_cmd(Command {
        prp1: 0x10_0000,
        cdw10: (7 << 16) | 1,
        cdw11: 1,
        ..Command::new(admin::CREATE_CQ, 0)
    });
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);
    assert_eq!(h.m.violations()[0].kind, ViolationKind::Dma);
}

#[test]
fn smart_and_firmware_log_pages() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8192);
    for _ in 0..3 {
        assert_ok(
            &h.io_cmd(&mut q, Host::rw(spec::io::WRITE, 0, 16, buf.iova().0, buf.iova().0 + 4096)),
        );
    }
    assert_ok(&h.io_cmd(&mut q, Host::rw(spec::io::READ, 0, 1, buf.iova().0, 0)));
    // 512 bytes = 128 dwords: NUMDL 127.
    let (c, log) = h.admin_read(
        Command {
            cdw10: u32::from(spec::log::SMART_HEALTH) | 127 << 16,
            ..Command::new(admin::GET_LOG_PAGE, 0xffff_ffff)
        },
        512,
    );
    assert_ok(&c);
    let at = |o: usize| u64::from_le_bytes(log[o..o + 8].try_into().unwrap());
    assert_eq!(
        (at(32), at(48)),
        (1, 1),
        "data units read/written (thousands of sectors, rounded up)"
    );
    assert_eq!((at(64), at(80)), (1, 3), "host read/write commands");
    assert_eq!(log[3], 100);
    let (c, log) = h.admin_read(
        Command {
            cdw10: u32::from(spec::log::FIRMWARE_SLOT) | 127 << 16,
            ..Command::new(admin::GET_LOG_PAGE, 0)
        },
        512,
    );
    assert_ok(&c);
    assert_eq!(&log[8..11], b"1.0");
    let c = h.admin_cmd(Command {
        cdw10: 0x7f | 127 << 16,
        prp1: buf.iova().0,
        ..Command::new(admin::GET_LOG_PAGE, 0)
    });
    assert_status(&c, sct::COMMAND_SPECIFIC, specific::INVALID_LOG_PAGE);
    // Offset past the page.
    let c = h.admin_cmd(Command {
        cdw10: u32::from(spec::log::SMART_HEALTH) | 127 << 16,
        cdw12: 512,
        prp1: buf.iova().0,
        ..Command::new(admin::GET_LOG_PAGE, 0)
    });
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);
    assert_eq!(h.m.admin_commands(admin::GET_LOG_PAGE), 4);
}
