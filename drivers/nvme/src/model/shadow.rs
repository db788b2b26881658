//! Shadow doorbells (Doorbell Buffer Config, NVMe 1.3 5.7 and 7.13): the host keeps its SQ
//! tails and CQ heads in a page of memory and writes a doorbell register only when the
//! controller's EventIdx page asks for it.
//!
//! The model, like QEMU's controller, publishes an SQ's EventIdx as the tail it has fetched up
//! to (so a driver must ring once the controller has caught up), reads CQ heads from the shadow
//! page whenever it posts, and publishes a CQ's EventIdx as the current head only while a CQE
//! waits for room (so the driver's next head update rings and frees it); a new queue starts
//! with its EventIdx published (SQ 0, CQ one lap away), so a driver that leaves a stale index
//! in the shadow page is caught on the queue's first completion. The admin queue uses
//! its registers, as Linux and SPDK do. Strictness: a register write must carry the value the
//! shadow page holds, and shadow values obey the same rules as register values.

use super::inject::ViolationKind;
use super::records::{Dbbuf, Outcome};
use super::state::State;
use crate::spec::status::{generic, sct};
use crate::spec::{Command, Status, PAGE_SIZE};

/// Byte offset of a doorbell's slot in either page (the register layout, stride 4).
fn slot(qid: u16, is_cq: bool) -> u64 {
    (2 * u64::from(qid) + u64::from(is_cq)) * 4
}

impl State {
    /// Doorbell Buffer Config: both pointers page aligned and mapped, or Invalid Field.
    pub fn doorbell_buffer_config(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let invalid = Status::new(sct::GENERIC, generic::INVALID_FIELD).with_dnr();
        let page = PAGE_SIZE as u64;
        let (shadow, event) = (cmd.prp1, cmd.prp2);
        if shadow == 0 || event == 0 || shadow % page != 0 || event % page != 0 {
            return Err(invalid);
        }
        let what = "checking a Doorbell Buffer Config page";
        if self.dma_check(shadow, PAGE_SIZE, what).is_err()
            || self.dma_check(event, PAGE_SIZE, what).is_err()
        {
            return Err(invalid);
        }
        self.dbbuf = Some(Dbbuf { shadow, event });
        Ok(Outcome::ok(0))
    }

    /// The shadow value of an I/O queue's doorbell, when shadow doorbells are on.
    pub fn shadow_value(&mut self, qid: u16, is_cq: bool) -> Option<u32> {
        let d = self.dbbuf.filter(|_| qid != 0)?;
        let mut b = [0u8; 4];
        self.dma_read(d.shadow + slot(qid, is_cq), &mut b, "reading a shadow doorbell").ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// A register write to an I/O queue's doorbell must mirror the shadow page.
    pub fn check_register_matches_shadow(&mut self, qid: u16, is_cq: bool, value: u32) -> bool {
        match self.shadow_value(qid, is_cq) {
            Some(s) if s != value => {
                let name = if is_cq { "CQ head" } else { "SQ tail" };
                self.violation(
                    ViolationKind::Doorbell,
                    format!(
                        "{name} doorbell register of queue {qid} written with {value} while its \
                         shadow doorbell holds {s}: the shadow is updated first and the register \
                         mirrors it"
                    ),
                );
                false
            }
            _ => true,
        }
    }

    /// Publishes an EventIdx for an I/O queue's doorbell.
    pub fn set_event_idx(&mut self, qid: u16, is_cq: bool, value: u32) {
        if let Some(d) = self.dbbuf.filter(|_| qid != 0) {
            let at = d.event + slot(qid, is_cq);
            let _ = self.dma_write(at, &value.to_le_bytes(), "writing an EventIdx");
        }
    }

    /// Picks up a CQ head from the shadow page (checked like a register write). Returns
    /// whether it moved.
    pub fn refresh_cq_head(&mut self, cqid: u16) -> bool {
        let Some(value) = self.shadow_value(cqid, true) else { return false };
        let Some(cq) = self.cqs.get(usize::from(cqid)).and_then(|q| q.as_ref()) else {
            return false;
        };
        if value == cq.head {
            return false;
        }
        self.counters.shadow_heads += 1;
        // The same rules as a register write: a stale or runaway shadow head is a driver bug.
        self.cq_head_doorbell(cqid, value)
    }
}
