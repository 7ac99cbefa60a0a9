//! Samples a process's resident memory (`VmRSS` in `/proc/PID/status`) and CPU time (utime +
//! stime, fields 14 and 15 of `/proc/PID/stat`, in clock ticks) once a second. Linux only;
//! elsewhere every sample is an error, reported as such.

use std::fs;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 almost everywhere).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

pub fn sample(pid: u32, ticks_per_second: u64) -> Result<ProcSample, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rss_kib =
        parse_vm_rss_kib(&status).ok_or_else(|| format!("/proc/{pid}/status: no VmRSS line"))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| format!("/proc/{pid}/stat: cannot read utime and stime"))?;
    Ok(ProcSample {
        rss_kib,
        cpu_seconds: ticks as f64 / ticks_per_second.max(1) as f64,
    })
}

/// `VmRSS:   12345 kB` → 12345.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// utime + stime in clock ticks. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted after the last `)`: there, field 3
/// (state) is the first word, so utime (14) and stime (15) are the 12th and 13th.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// One watched process over the run.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    pub first: Option<ProcSample>,
    pub last: Option<ProcSample>,
    pub peak_rss_kib: u64,
    /// The first sampling error, if any (e.g. the process exited).
    pub error: Option<String>,
}

impl Watched {
    pub fn new(name: String, pid: u32) -> Watched {
        Watched {
            name,
            pid,
            first: None,
            last: None,
            peak_rss_kib: 0,
            error: None,
        }
    }

    /// Takes a sample; returns it, or `None` if the process could not be read.
    pub fn sample(&mut self, ticks_per_second: u64) -> Option<ProcSample> {
        match sample(self.pid, ticks_per_second) {
            Ok(s) => {
                self.first.get_or_insert(s);
                self.last = Some(s);
                self.peak_rss_kib = self.peak_rss_kib.max(s.rss_kib);
                Some(s)
            }
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\ttidegate\nVmPeak:\t  999 kB\nVmRSS:\t   12632 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12_632));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_a_tricky_name() {
        let stat = "4242 (my) (odd name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 731 269 0 0 20 0 3 0 100 1000000 3000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parens"), None);
    }

    #[test]
    fn samples_this_process() {
        let ticks = clock_ticks();
        assert!(ticks > 0);
        let mut me = Watched::new("self".into(), std::process::id());
        let s = me.sample(ticks).expect("/proc/self readable");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
        assert_eq!(me.peak_rss_kib, s.rss_kib);
        let mut gone = Watched::new("gone".into(), u32::MAX);
        assert!(gone.sample(ticks).is_none());
        assert!(gone.error.is_some());
    }
}
