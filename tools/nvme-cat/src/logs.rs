//! smart-log and error-log.

use crate::output::{fields, json};
use crate::target::open_nvme;
use crate::{with_ctrl, Format};
use mfio_nvme::ControllerOptions;
use serde_json::json;

/// SMART / Health Information.
pub fn smart(device: &str, out: Format) -> Result<(), String> {
    let nvme = open_nvme(device, ControllerOptions::default())?;
    let s = with_ctrl!(&nvme, |c| c.smart_log()).map_err(|e| e.to_string())?;
    match out {
        Format::Json => json(&json!({
            "critical_warning": s.critical_warning,
            "temperature": s.temperature,
            "avail_spare": s.available_spare,
            "spare_thresh": s.available_spare_threshold,
            "percent_used": s.percentage_used,
            "data_units_read": s.data_units_read.to_string(),
            "data_units_written": s.data_units_written.to_string(),
            "host_read_commands": s.host_read_commands.to_string(),
            "host_write_commands": s.host_write_commands.to_string(),
            "controller_busy_time": s.controller_busy_time.to_string(),
            "power_cycles": s.power_cycles.to_string(),
            "power_on_hours": s.power_on_hours.to_string(),
            "unsafe_shutdowns": s.unsafe_shutdowns.to_string(),
            "media_errors": s.media_errors.to_string(),
            "num_err_log_entries": s.num_err_log_entries.to_string(),
        })),
        Format::Normal => {
            println!("SMART/Health Information Log:");
            fields(&[
                ("critical_warning", format!("{:#x}", s.critical_warning)),
                (
                    "temperature",
                    format!("{} K ({} C)", s.temperature, i32::from(s.temperature) - 273),
                ),
                ("available_spare", format!("{}%", s.available_spare)),
                ("available_spare_threshold", format!("{}%", s.available_spare_threshold)),
                ("percentage_used", format!("{}%", s.percentage_used)),
                ("data_units_read", s.data_units_read.to_string()),
                ("data_units_written", s.data_units_written.to_string()),
                ("host_read_commands", s.host_read_commands.to_string()),
                ("host_write_commands", s.host_write_commands.to_string()),
                ("controller_busy_time", s.controller_busy_time.to_string()),
                ("power_cycles", s.power_cycles.to_string()),
                ("power_on_hours", s.power_on_hours.to_string()),
                ("unsafe_shutdowns", s.unsafe_shutdowns.to_string()),
                ("media_errors", s.media_errors.to_string()),
                ("num_err_log_entries", s.num_err_log_entries.to_string()),
            ]);
        }
    }
    Ok(())
}

/// Error Information log.
pub fn errors(device: &str, out: Format) -> Result<(), String> {
    let nvme = open_nvme(device, ControllerOptions::default())?;
    let entries = with_ctrl!(&nvme, |c| c.error_log()).map_err(|e| e.to_string())?;
    match out {
        Format::Json => json(&json!({
            "errors": entries.iter().map(|e| json!({
                "error_count": e.error_count, "sqid": e.sqid, "cmdid": e.cid,
                "status_field": e.status.0, "status": e.status.to_string(),
                "parm_err_loc": e.parameter_error_location, "lba": e.lba, "nsid": e.nsid,
            })).collect::<Vec<_>>()
        })),
        Format::Normal => {
            println!("Error Log Entries: {}", entries.len());
            for e in &entries {
                println!(
                    "error_count {} sqid {} cmdid {:#x} lba {} nsid {} status {}",
                    e.error_count, e.sqid, e.cid, e.lba, e.nsid, e.status
                );
            }
        }
    }
    Ok(())
}
