//! What the benchmarks share: watching the node processes through /proc.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One node process, as last seen.
#[derive(Default, Clone)]
pub struct Proc {
    /// The binary's file name (`mofa-agent`, ...).
    pub binary: String,
    /// User + system time, in clock ticks (USER_HZ, 100 per second on Linux).
    pub cpu_ticks: u64,
    pub peak_rss_kb: u64,
}

impl Proc {
    pub fn cpu_ms(&self) -> f64 {
        self.cpu_ticks as f64 * 10.0
    }

    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss_kb as f64 / 1024.0
    }
}

/// Samples every process running a binary from `bin_dir` (not its subfolders) every 20 ms,
/// until stopped.
pub struct Sampler {
    seen: Arc<Mutex<HashMap<u32, Proc>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sampler {
    pub fn start(bin_dir: &str) -> Sampler {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, bin_dir) = (seen.clone(), stop.clone(), bin_dir.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(&bin_dir, &mut seen.lock().unwrap());
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Sampler { seen, stop, thread }
    }

    /// Every process seen, by PID.
    pub fn stop(self) -> HashMap<u32, Proc> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

fn sample(bin_dir: &str, seen: &mut HashMap<u32, Proc>) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        // The node binaries sit in `bin_dir` itself; the benchmark's own binary is in deps/.
        if exe.parent() != Some(std::path::Path::new(bin_dir)) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime is the 14th field, stime the 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        let p = seen.entry(pid).or_default();
        if p.binary.is_empty() {
            p.binary = exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        p.cpu_ticks = p.cpu_ticks.max(ticks);
        p.peak_rss_kb = p.peak_rss_kb.max(hwm);
    }
}

/// The value at fraction `p` (0..=1) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A task's start: its id is a UUIDv7, whose first 48 bits are its creation time in ms.
pub fn id_ms(id: &str) -> i64 {
    let hex = id.replace('-', "");
    i64::from_str_radix(&hex[..12], 16).expect("a UUIDv7")
}
