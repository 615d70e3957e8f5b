//! `CORES=auto` follows a cgroup CPU quota: the real binary, started inside
//! a cgroup given a quota here (v1 `cpu.cfs_quota_us` where the `cpu`
//! controller is on v1, as on this machine; v2 `cpu.max` otherwise).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{free_port, wait_until, RedisServer};

const PERIOD_US: u64 = 100_000;

/// A cgroup of its own with a CPU quota, removed on drop.
struct CpuGroup {
    dir: PathBuf,
}

impl CpuGroup {
    /// A new group allowed `cores` cores of CPU time per period.
    fn with_quota(cores: f64) -> Self {
        let quota = (cores * PERIOD_US as f64) as u64;
        let name = format!("webhook-ingestor-test-{}", std::process::id());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = |fstype: &str, option: Option<&str>| {
            mountinfo.lines().find_map(|l| {
                let (mount, fs) = l.split_once(" - ")?;
                let mut fs = fs.split(' ');
                let (kind, super_opts) = (fs.next()?, fs.nth(1)?);
                let wanted = kind == fstype && option.is_none_or(|o| super_opts.split(',').any(|s| s == o));
                wanted.then(|| PathBuf::from(mount.split(' ').nth(4).unwrap()))
            })
        };
        if let Some(v1) = mount("cgroup", Some("cpu")) {
            let dir = v1.join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string()).unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
            return Self { dir };
        }
        let v2 = mount("cgroup2", None).expect("no cgroup hierarchy with a cpu controller to put a quota on");
        // The root may hold processes and children alike; its children get
        // the cpu controller from its subtree_control.
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
        let dir = v2.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
            .expect("cgroup v2: the cpu controller is not enabled for the new group");
        Self { dir }
    }

    /// `program args…`, moved into the group before it starts (the shell
    /// joins the group, then becomes the program).
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(program)
            .args(args);
        cmd
    }

    fn holds(&self, pid: u32) -> bool {
        let name = self.dir.file_name().unwrap().to_str().unwrap();
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(name))
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Empty by now (each process was killed and reaped).
        let _ = std::fs::remove_dir(&self.dir);
    }
}

struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the gateway said at start: the `cores chosen` line and how many
/// runtimes it serves with.
struct Started {
    reason: String,
    runtimes: u64,
    warnings: Vec<String>,
}

fn start_in(group: &CpuGroup, redis: &RedisServer, cores: &str) -> Started {
    let port = free_port();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cores-{cores}-{port}.log"));
    let child = group
        .command(Path::new(env!("CARGO_BIN_EXE_webhook-ingestor")), &["serve", "--role", "api"])
        .env_remove("DATABASE_URL")
        .envs([
            ("HOST", "127.0.0.1"),
            ("PORT", &port.to_string()),
            ("REDIS_URL", &redis.url()),
            ("CORES", cores),
            ("PIN_CORES", "false"),
            ("LOG_LEVEL", "info"),
        ])
        // The JSON log goes to stdout.
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped however this ends, so the group can be removed.
    let child = Reaped(child);
    let serving = || std::fs::read_to_string(&log).unwrap_or_default().contains("webhook-ingestor serving");
    wait_until(Duration::from_secs(10), "the gateway to start", serving);
    assert!(group.holds(child.0.id()), "the gateway runs inside the test's cgroup");
    drop(child);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON log line: {e}: {l}")))
        .collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    let chosen = lines.iter().find(|l| message(l) == "cores chosen").expect("a `cores chosen` line");
    let serving = lines.iter().find(|l| message(l) == "webhook-ingestor serving").expect("a serving line");
    Started {
        reason: chosen["fields"]["reason"].as_str().unwrap().to_string(),
        runtimes: serving["fields"]["runtimes"].as_u64().unwrap(),
        warnings: lines.iter().filter(|l| l["level"] == "WARN").map(message).collect(),
    }
}

#[test]
fn cores_auto_follows_a_cgroup_cpu_quota_and_all_ignores_it() {
    let set = core_affinity::get_core_ids().expect("the CPU set").len() as u64;
    assert!(set >= 2, "a quota below the CPU set needs a CPU set of 2 cores or more, this one has {set}");
    // Half a core short of the set: whole cores are rounded down.
    let group = CpuGroup::with_quota(set as f64 - 0.5);
    let redis = RedisServer::start();

    let auto = start_in(&group, &redis, "auto");
    assert_eq!(auto.runtimes, set - 1, "CORES=auto under a {}-core quota: {}", set as f64 - 0.5, auto.reason);
    assert!(auto.reason.contains("quota"), "the log says why: {}", auto.reason);
    assert!(!auto.warnings.iter().any(|w| w.contains("throttled")), "{:?}", auto.warnings);

    let all = start_in(&group, &redis, "all");
    assert_eq!(all.runtimes, set, "CORES=all ignores the quota: {}", all.reason);
    assert!(
        all.warnings.iter().any(|w| w.contains("throttled")),
        "running more runtimes than the quota is warned about: {:?}",
        all.warnings
    );
}
