//! CPU time of processes and of the whole machine, from `/proc`, so a
//! load point can say where the cores went: the service, its database,
//! the load generator, or everyone else on a shared machine.

use std::time::Duration;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant and has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

fn ticks(t: u64) -> Duration {
    Duration::from_secs_f64(t as f64 / ticks_per_second() as f64)
}

/// Fields of `/proc/PID/stat` after the command name: `[0]` is the state
/// (field 3), so field N is at `N - 3`.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0)).collect())
}

/// User + system time of process `pid` (all its threads); zero when it
/// is gone.
pub fn process(pid: u32) -> Duration {
    match stat_fields(pid) {
        Some(f) if f.len() > 12 => ticks(f[11] + f[12]),
        _ => Duration::ZERO,
    }
}

/// On-CPU time so far of process `pid`, every thread it ever ran
/// included, to the nanosecond (its CPU-time clock,
/// `clock_getcpuclockid`), for spans too short for [`process`]'s clock
/// ticks; `None` when the process is gone or its clock cannot be read.
pub fn on_cpu(pid: u32) -> Option<Duration> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes one clockid_t through a pointer to a live local.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec through a pointer to a live local.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// User + system time of `pid`, its living children, and its children
/// that ended and were waited for (a server that forks a process per
/// connection, like PostgreSQL's postmaster).
pub fn process_tree(pid: u32) -> Duration {
    let own = match stat_fields(pid) {
        Some(f) if f.len() > 14 => ticks(f[11] + f[12] + f[13] + f[14]),
        _ => Duration::ZERO,
    };
    own + children(pid).into_iter().map(process).sum::<Duration>()
}

/// Pids whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat_fields(p).is_some_and(|f| f.get(1) == Some(&u64::from(pid))))
        .collect()
}

/// The machine's busy and total CPU time so far (`/proc/stat`, all cores).
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    pub busy: Duration,
    pub total: Duration,
    /// Time the hypervisor ran someone else while a vCPU wanted to run
    /// (part of `busy`): figures taken while it grows are the host's as
    /// much as this program's.
    pub steal: Duration,
}

pub fn machine() -> Machine {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return Machine::default();
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return Machine::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Machine {
        busy: ticks(total - idle),
        total: ticks(total),
        steal: ticks(v.get(7).copied().unwrap_or(0)),
    }
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Context switches (voluntary and not) of every living thread of `pid`
/// so far: each hand-off of work between threads costs one or two.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| switches_in(&status))
        .sum()
}

/// Context switches of the calling thread so far.
pub fn thread_context_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status").map_or(0, |s| switches_in(&s))
}

fn switches_in(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}
