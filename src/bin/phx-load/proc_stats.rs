//! CPU time and resident memory of this process or of the server (`--server-pid`), from
//! /proc through `procfs`; unknown on other systems.

#[cfg(target_os = "linux")]
mod imp {
    use procfs::process::Process;

    fn process(pid: Option<u32>) -> Option<Process> {
        match pid {
            Some(pid) => Process::new(i32::try_from(pid).ok()?).ok(),
            None => Process::myself().ok(),
        }
    }

    pub(super) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
        let stat = process(pid)?.stat().ok()?;
        Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }

    pub(super) fn rss_kib(pid: u32) -> Option<u64> {
        process(Some(pid))?.status().ok()?.vmrss
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn cpu_seconds(_pid: Option<u32>) -> Option<f64> {
        None
    }

    pub(super) fn rss_kib(_pid: u32) -> Option<u64> {
        None
    }
}

/// User + system CPU time of this process, in seconds (0 when unknown).
pub(crate) fn cpu_seconds_self() -> f64 {
    imp::cpu_seconds(None).unwrap_or(0.0)
}

/// User + system CPU time of process `pid`, in seconds.
pub(crate) fn cpu_seconds_of(pid: u32) -> Option<f64> {
    imp::cpu_seconds(Some(pid))
}

/// Resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    imp::rss_kib(pid)
}
