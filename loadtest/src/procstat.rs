//! CPU time of a server process, read from `/proc/<pid>/stat` (`utime + stime`), for the
//! server-side cost per inference that does not depend on how fast the load generator is.
//!
//! Descendant processes are included, because some servers run models in worker processes
//! (MLServer's parallel workers); threads are already included in a process's own counters.
//! Linux only: elsewhere [`ProcessCpu::new`] fails and the report leaves the figure out.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::time::Duration;

pub struct ProcessCpu {
    pid: u32,
    ticks_per_second: u64,
}

impl ProcessCpu {
    /// Checks that the process can be read now.
    pub fn new(pid: u32) -> io::Result<Self> {
        // `getconf` rather than sysconf(3) keeps this crate free of unsafe FFI; USER_HZ is 100
        // on every mainstream Linux architecture, which is the fallback.
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100);
        let cpu = ProcessCpu {
            pid,
            ticks_per_second,
        };
        cpu.cpu_time()?;
        Ok(cpu)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User + system time of the process and its live descendants so far.
    pub fn cpu_time(&self) -> io::Result<Duration> {
        let own = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let (_, mut ticks) = parse_stat(&own).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{}/stat", self.pid),
            )
        })?;
        // Every process's parent, to find the descendants.
        let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes come and go while we scan; a vanished one simply does not count.
            if let Some((ppid, t)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            {
                children.entry(ppid).or_default().push((pid, t));
            }
        }
        let mut stack = vec![self.pid];
        while let Some(parent) = stack.pop() {
            for &(child, t) in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
                ticks += t;
                stack.push(child);
            }
        }
        Ok(Duration::from_secs_f64(
            ticks as f64 / self.ticks_per_second as f64,
        ))
    }
}

/// `(ppid, utime + stime)` from the text of `/proc/<pid>/stat`. The command name (field 2) is
/// in parentheses and may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_awkward_names() {
        let line =
            "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat(line), Some((1, 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_and_sees_it_grow() {
        let cpu = ProcessCpu::new(std::process::id()).unwrap();
        let before = cpu.cpu_time().unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu.cpu_time().unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
        assert!(ProcessCpu::new(u32::MAX).is_err());
    }
}
