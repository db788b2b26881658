//! CPU time of the calling thread, for tests that check a wait sleeps rather than spins.

/// User + system CPU time of this thread so far, in clock ticks (10 ms on Linux), from
/// `/proc/thread-self/stat`.
///
/// # Panics
/// Where `/proc/thread-self/stat` cannot be read or parsed (not Linux).
pub fn thread_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("the command name") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// `ticks`, or no bound at all under valgrind (the CI stage sets `MFIO_VALGRIND`), where
/// valgrind's own work on every wake dwarfs what a sleeping wait costs: there such tests check
/// behaviour only.
pub fn bound(ticks: u64) -> u64 {
    if std::env::var_os("MFIO_VALGRIND").is_some() {
        u64::MAX
    } else {
        ticks
    }
}
