//! Machines on one box: Linux network namespaces joined by a bridge, and a dora cluster on them
//! (a coordinator on one, a daemon on each of the others), for the distributed tests.
//!
//! [`Network::new`] makes a namespace per machine plus one holding the bridge, each machine
//! with loopback up and one veth into the bridge at `10.77.0.<n>/24`. Nothing touches the
//! host's own network namespace: the host's 127.0.0.1 is out of reach from every machine, as it
//! would be from another computer. Names carry a random suffix, so tests running at once do not
//! meet; dropping the [`Network`] kills every process left in its namespaces and deletes them,
//! even when the test failed. Needs root and `ip` (iproute2; `bin/setup` installs it).
//!
//! [`Cluster::start`] runs `dora coordinator` in the `coord` namespace and `dora daemon
//! --machine-id NAME` in each machine's, with the node binaries' folder first on the daemons'
//! PATH (the split dataflows name their binaries bare), and waits until every daemon has
//! registered. [`Cluster::start_dataflow`] is `dora start --attach`, run in `coord`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dora::{self, Guard};

/// One machine: its name (the daemon's machine id), namespace and address.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub ns: String,
    pub ip: String,
}

/// Network namespaces joined by a bridge (see the module documentation).
pub struct Network {
    /// The namespace that holds the bridge.
    bridge: String,
    pub machines: Vec<Machine>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run `ip` (iproute2; bin/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A short random suffix: the low bits of the time and the pid, hashed.
fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

impl Network {
    /// A namespace per name in `machines`, on one bridge, addresses 10.77.0.1, .2, ... in order.
    pub fn new(machines: &[&str]) -> Network {
        let tag = suffix();
        let bridge = format!("mofa-{tag}-br");
        let mut net = Network {
            bridge: bridge.clone(),
            machines: Vec::new(),
        };
        // Registered before each step, so a failure half-way is cleaned up too.
        ip(&["netns", "add", &bridge]);
        let br = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &bridge, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        br(&["link", "set", "lo", "up"]);
        br(&["link", "add", "br0", "type", "bridge"]);
        br(&["link", "set", "br0", "up"]);
        for (i, name) in machines.iter().enumerate() {
            let ns = format!("mofa-{tag}-{name}");
            let addr = format!("10.77.0.{}", i + 1);
            ip(&["netns", "add", &ns]);
            net.machines.push(Machine {
                name: name.to_string(),
                ns: ns.clone(),
                ip: addr.clone(),
            });
            let veth = format!("v{i}");
            br(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            br(&["link", "set", &veth, "master", "br0"]);
            br(&["link", "set", &veth, "up"]);
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip(&all);
            };
            inside(&["link", "set", "lo", "up"]);
            inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            inside(&["link", "set", "eth0", "up"]);
        }
        net
    }

    pub fn machine(&self, name: &str) -> &Machine {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no machine {name}"))
    }

    /// The inode of `name`'s network namespace: what /proc/<pid>/ns/net of its processes shows.
    pub fn inode(&self, name: &str) -> u64 {
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(ns_path(&self.machine(name).ns)).expect("the namespace"),
        )
    }

    /// Makes `cmd` start inside `name`'s namespace (it keeps its pid: no `ip netns exec`).
    pub fn enter(&self, name: &str, cmd: &mut Command) {
        let file = File::open(ns_path(&self.machine(name).ns)).expect("open the namespace");
        // SAFETY: setns and close are async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Runs `f` on a thread of its own inside `name`'s namespace: a socket it makes (a server
    /// bound there) stays in that namespace whichever thread uses it later.
    pub fn run_in<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = ns_path(&self.machine(name).ns);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open the namespace");
            // SAFETY: a plain syscall on an fd we own; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace")
    }

    /// The pids of the processes in `name`'s namespace.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        ns_pids(&self.machine(name).ns)
    }
}

fn ns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The inode of the network namespace process `pid` is in.
pub fn ns_inode_of(pid: u32) -> Option<u64> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some(std::os::unix::fs::MetadataExt::ino(&meta))
}

impl Drop for Network {
    fn drop(&mut self) {
        let all: Vec<String> = self
            .machines
            .iter()
            .map(|m| m.ns.clone())
            .chain([self.bridge.clone()])
            .collect();
        // Whatever still runs in a namespace (a daemon, an orphaned node) keeps it alive.
        for _ in 0..3 {
            let pids: Vec<u32> = all.iter().flat_map(|ns| ns_pids(ns)).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid found in our own namespace.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for ns in all {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A dora cluster on a [`Network`]: the coordinator on machine `coord`, a daemon on each other.
pub struct Cluster {
    // Dropped in this order: the processes, then the namespaces, then the folder.
    daemons: Vec<(String, Guard)>,
    _coordinator: Guard,
    pub net: Network,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Namespaces `coord` and each of `machines`, the coordinator and the daemons, with `bin`
    /// (the node binaries) first on the daemons' PATH. Returns once every daemon is registered.
    pub fn start(machines: &[&str], bin: &Path) -> Cluster {
        let mut names = vec!["coord"];
        names.extend_from_slice(machines);
        let net = Network::new(&names);
        let dir = tempfile::tempdir().expect("tempdir");
        let coord_ip = net.machine("coord").ip.clone();
        let mut cmd = dora::dora_command();
        cmd.args(["coordinator", "--interface", &coord_ip, "--store", "memory"])
            .current_dir(dir.path()); // it writes out/dora-coordinator.txt there
        let coordinator = spawn_logged(&net, "coord", cmd, &dir.path().join("coordinator.log"));
        let mut cluster = Cluster {
            daemons: Vec::new(),
            _coordinator: coordinator,
            net,
            dir,
        };
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        for m in machines {
            let work = cluster.dir.path().join(m);
            std::fs::create_dir(&work).expect("work dir");
            let mut cmd = dora::dora_command();
            cmd.args(["daemon", "--machine-id", m, "--coordinator-addr", &coord_ip])
                .env("PATH", &path)
                .current_dir(&work);
            let log = cluster.dir.path().join(format!("daemon-{m}.log"));
            let guard = spawn_logged(&cluster.net, m, cmd, &log);
            cluster.daemons.push((m.to_string(), guard));
        }
        cluster.wait_for_daemons(machines, Duration::from_secs(60));
        cluster
    }

    fn wait_for_daemons(&self, machines: &[&str], limit: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            let out = self.cli(&["cluster", "status"]).output().expect("dora");
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            let registered = |m: &&str| last.lines().any(|l| l.starts_with(&format!("{m}-")));
            if machines.iter().all(registered) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "the daemons did not all register within {limit:?}:\n{last}\n{}",
            self.logs()
        );
    }

    /// A dora CLI command run in the coordinator's namespace, aimed at the coordinator.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = dora::dora_command();
        cmd.args(args)
            .arg("--coordinator-addr")
            .arg(&self.net.machine("coord").ip)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        self.net.enter("coord", &mut cmd);
        cmd
    }

    /// `dora start <yml> --attach` with `--env` for each of `env`, in the background; its
    /// output goes to `dora-start.log` in the cluster's folder. It starts a copy of `yml` in
    /// that folder: dora writes its session file into `out/` beside the dataflow.
    pub fn start_dataflow(&self, yml: &Path, env: &[(&str, String)]) -> Guard {
        let copy = self
            .dir
            .path()
            .join(yml.file_name().expect("a dataflow file"));
        std::fs::copy(yml, &copy).expect("copy the dataflow");
        let mut cmd = self.cli(&["start"]);
        cmd.arg(&copy).arg("--attach");
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        let log = File::create(self.start_log()).expect("log");
        cmd.stdout(log.try_clone().expect("log")).stderr(log);
        cmd.process_group(0);
        Guard {
            child: cmd.spawn().expect("spawn dora start"),
        }
    }

    pub fn start_log(&self) -> PathBuf {
        self.dir.path().join("dora-start.log")
    }

    /// The pid of `machine`'s daemon.
    pub fn daemon_pid(&self, machine: &str) -> u32 {
        self.daemons
            .iter()
            .find(|(m, _)| m == machine)
            .map(|(_, g)| g.child.id())
            .unwrap_or_else(|| panic!("no daemon on {machine}"))
    }

    /// Kills `machine`'s daemon with SIGKILL: the machine is gone as far as dora can tell. (The
    /// nodes it started live on, cut off, until the network is dropped.)
    pub fn kill_daemon(&mut self, machine: &str) {
        let pid = self.daemon_pid(machine);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        if let Some((_, g)) = self.daemons.iter_mut().find(|(m, _)| m == machine) {
            let _ = g.child.wait();
        }
    }

    /// Everything the coordinator, the daemons and `dora start` logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            all.push_str(&format!("==== {}\n{text}\n", f.display()));
        }
        all
    }
}

fn spawn_logged(net: &Network, machine: &str, mut cmd: Command, log: &Path) -> Guard {
    let file = File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file);
    cmd.process_group(0);
    net.enter(machine, &mut cmd);
    Guard {
        child: cmd.spawn().expect("spawn dora"),
    }
}
