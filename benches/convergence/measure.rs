//! What the bench reads: /proc (CPU, memory), kube-apiserver's and the operator's /metrics.

use std::collections::{BTreeMap, HashMap};

use kube::Client;

fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// A `Vm*` line of /proc/PID/status (`VmHWM:` is the peak RSS), in MiB.
pub fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    Some(crate::support::proc_status_kib(pid, field)? as f64 / 1024.0)
}

/// A child of this process by command name (kube-apiserver, etcd).
fn child_pid(name: &str) -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if &stat[open + 1..close] == name && ppid == Some(me) {
            return Some(pid);
        }
    }
    None
}

/// CPU seconds of the operator (or peer), kube-apiserver, etcd and this process (the bench,
/// token endpoint included), and of the whole machine (/proc/stat: busy, all, stolen).
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    pub operator: f64,
    pub apiserver: f64,
    pub etcd: f64,
    pub bench: f64,
    pub machine_busy: f64,
    pub machine_all: f64,
    pub machine_steal: f64,
}

impl Cpu {
    /// Share of the machine's CPU time that was busy, in percent.
    pub fn busy_percent(&self) -> f64 {
        percent(self.machine_busy, self.machine_all)
    }
    pub fn steal_percent(&self) -> f64 {
        percent(self.machine_steal, self.machine_all)
    }
}

fn percent(part: f64, all: f64) -> f64 {
    if all > 0.0 { 100.0 * part / all } else { 0.0 }
}

fn machine_cpu() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or_default() + v.get(4).copied().unwrap_or_default();
    let steal = v.get(7).copied().unwrap_or_default();
    let tck = clock_ticks();
    ((all - idle) / tck, all / tck, steal / tck)
}

pub fn cpu_now(operator: Option<u32>) -> Cpu {
    let machine = machine_cpu();
    Cpu {
        operator: operator.and_then(cpu_seconds).unwrap_or_default(),
        apiserver: child_pid("kube-apiserver")
            .and_then(cpu_seconds)
            .unwrap_or_default(),
        etcd: child_pid("etcd").and_then(cpu_seconds).unwrap_or_default(),
        bench: cpu_seconds(std::process::id()).unwrap_or_default(),
        machine_busy: machine.0,
        machine_all: machine.1,
        machine_steal: machine.2,
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            operator: self.operator - o.operator,
            apiserver: self.apiserver - o.apiserver,
            etcd: self.etcd - o.etcd,
            bench: self.bench - o.bench,
            machine_busy: self.machine_busy - o.machine_busy,
            machine_all: self.machine_all - o.machine_all,
            machine_steal: self.machine_steal - o.machine_steal,
        }
    }
}

/// A phase starts once the machine has been less busy than this for a whole window: what the
/// phase before left running (the apiserver's deletions and garbage collection, etcd's
/// compaction) would otherwise land on the next phase's clock. An idle control plane keeps
/// about 0.15 of a core busy (7 % of two).
const QUIET_BUSY_PERCENT: f64 = 15.0;
const QUIET_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
const QUIET_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait until the machine is quiet, at most `QUIET_MAX`.
pub async fn until_quiet() {
    let started = std::time::Instant::now();
    loop {
        let before = cpu_now(None);
        tokio::time::sleep(QUIET_WINDOW).await;
        let busy = (cpu_now(None) - before).busy_percent();
        if busy < QUIET_BUSY_PERCENT {
            if started.elapsed() > 2 * QUIET_WINDOW {
                let waited = started.elapsed().as_secs_f64();
                eprintln!("bench: quiet after {waited:.1} s");
            }
            return;
        }
        if started.elapsed() >= QUIET_MAX {
            eprintln!(
                "bench: the machine is still {busy:.0}% busy after {QUIET_MAX:?}; measuring anyway"
            );
            return;
        }
    }
}

/// apiserver_request_total by "VERB resource[/subresource]" ("VERB (non-resource)" for
/// /metrics, /readyz...); "~sum …" and "~count …" hold the latency histogram's sum and count.
pub type ApiCounts = BTreeMap<String, f64>;

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// kube-apiserver's own bookkeeping (its identity Lease every 10 s), not the controllers'.
const APISERVER_OWN: [&str; 1] = ["leases"];

/// `name="value",…` of a Prometheus sample line.
fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let Some(after) = rest[eq + 1..].strip_prefix('"') else {
            break;
        };
        let (mut value, mut escaped, mut end) = (String::new(), false, None);
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, c) => {
                    value.push(if c == 'n' { '\n' } else { c });
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let Some(end) = end else { break };
        labels.insert(key, value);
        rest = &after[end + 1..];
    }
    labels
}

/// One sample line: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, HashMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match (line.find('{'), line.rfind('}')) {
        (Some(open), Some(close)) => (
            &line[..open],
            parse_labels(&line[open + 1..close]),
            &line[close + 1..],
        ),
        _ => {
            let (name, rest) = line.split_once(' ')?;
            (name, HashMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

pub async fn apiserver_counts(admin: &Client) -> Result<ApiCounts, String> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin
        .request_text(request)
        .await
        .map_err(|e| format!("GET apiserver /metrics: {e}"))?;
    let mut counts = ApiCounts::new();
    for (name, labels, value) in text.lines().filter_map(parse_sample) {
        let prefix = match name {
            "apiserver_request_total" => "",
            "apiserver_request_duration_seconds_sum" => "~sum ",
            "apiserver_request_duration_seconds_count" => "~count ",
            _ => continue,
        };
        let label = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
        let what = match (label("resource"), label("subresource")) {
            ("", _) => "(non-resource)".to_string(),
            (r, "") => r.to_string(),
            (r, s) => format!("{r}/{s}"),
        };
        *counts
            .entry(format!("{prefix}{} {what}", label("verb")))
            .or_default() += value;
    }
    Ok(counts)
}

pub fn diff(after: &ApiCounts, before: &ApiCounts) -> ApiCounts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn total(counts: &ApiCounts, filter: impl Fn(&str, &str) -> bool) -> f64 {
    counts
        .iter()
        .filter(|(k, _)| !k.starts_with('~'))
        .filter(|(k, _)| {
            let (verb, what) = k.split_once(' ').unwrap_or((k, ""));
            filter(verb, what)
        })
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// Requests per verb, resource requests only.
pub fn by_verb(counts: &ApiCounts) -> BTreeMap<String, f64> {
    let mut verbs = BTreeMap::new();
    for (key, value) in counts
        .iter()
        .filter(|(k, _)| !k.starts_with('~') && !k.ends_with("(non-resource)"))
    {
        *verbs
            .entry(key.split(' ').next().unwrap_or_default().to_string())
            .or_default() += value;
    }
    verbs
}

/// Mean apiserver-side latency of "VERB resource" in a window, in milliseconds.
pub fn latency_ms(counts: &ApiCounts, key: &str) -> Option<f64> {
    let (sum, count) = (
        counts.get(&format!("~sum {key}"))?,
        counts.get(&format!("~count {key}"))?,
    );
    (*count > 0.0).then(|| sum / count * 1000.0)
}

/// Resource requests (not /metrics, /readyz and the like).
pub fn resource_requests(counts: &ApiCounts) -> f64 {
    total(counts, |_, what| what != "(non-resource)")
}

pub fn writes(counts: &ApiCounts) -> f64 {
    total(counts, |verb, _| WRITE_VERBS.contains(&verb))
}

/// Writes by the controllers under test: all but kube-apiserver's own Lease renewals.
pub fn controller_writes(counts: &ApiCounts) -> f64 {
    total(counts, |verb, what| {
        WRITE_VERBS.contains(&verb) && !APISERVER_OWN.contains(&what) && what != "(non-resource)"
    })
}

/// One scrape of a process's Prometheus /metrics.
pub struct Scrape(pub String);

impl Scrape {
    /// Sum of the series of `name` whose labels pass `filter`.
    pub fn sum_where(&self, name: &str, filter: impl Fn(&HashMap<String, String>) -> bool) -> f64 {
        self.samples(name)
            .filter(|(labels, _)| filter(labels))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }

    pub fn sum(&self, name: &str) -> f64 {
        self.sum_where(name, |_| true)
    }

    /// Number of series of `name` whose labels pass `filter`.
    pub fn series_where(
        &self,
        name: &str,
        filter: impl Fn(&HashMap<String, String>) -> bool,
    ) -> usize {
        self.samples(name)
            .filter(|(labels, _)| filter(labels))
            .count()
    }

    fn samples<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (HashMap<String, String>, f64)> + 'a {
        self.0
            .lines()
            .filter_map(parse_sample)
            .filter(move |(n, ..)| *n == name)
            .map(|(_, labels, value)| (labels, value))
    }
}

/// The machine, for the report.
pub fn machine() -> BTreeMap<String, String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let memory = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_default();
    BTreeMap::from([
        ("nproc".into(), nproc),
        ("cpu".into(), model.unwrap_or_default()),
        ("mem_total_kib".into(), memory.unwrap_or_default()),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        ("loadavg_at_start".into(), loadavg()),
    ])
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `BENCH_PHASE_HOOK`: a shell command that runs for the length of each measured phase (the
/// phase's name in `$BENCH_PHASE`) and gets SIGINT at its end, e.g. a system-wide
/// `perf record -a -g -o /tmp/perf-$BENCH_PHASE.data`, to see where a phase's CPU went.
pub struct PhaseHook(Option<std::process::Child>);

impl PhaseHook {
    pub fn start(phase: &str) -> PhaseHook {
        use std::os::unix::process::CommandExt;
        let Some(command) = std::env::var("BENCH_PHASE_HOOK")
            .ok()
            .filter(|c| !c.trim().is_empty())
        else {
            return PhaseHook(None);
        };
        let child = std::process::Command::new("sh")
            .args(["-c", &command])
            .env("BENCH_PHASE", phase)
            .stdin(std::process::Stdio::null())
            // Its own process group: SIGINT reaches what `sh` started too.
            .process_group(0)
            .spawn()
            .inspect_err(|e| eprintln!("bench: BENCH_PHASE_HOOK did not start: {e}"))
            .ok();
        PhaseHook(child)
    }

    /// SIGINT to the hook's process group; killed if it has not exited within 60 s.
    pub fn stop(self) {
        let Some(mut child) = self.0 else { return };
        let _ = std::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("bench: BENCH_PHASE_HOOK still running 60 s after SIGINT; killed");
        let _ = child.kill();
        let _ = child.wait();
    }
}
