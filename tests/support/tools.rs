//! The ecosystem tools tests run for real (helm, actionlint): built once per machine by
//! tests/tools/build.sh (pinned, cached), or the binary that HELM_BIN / ACTIONLINT_BIN names.
//! Also a bounded, synchronous command runner for tests without a runtime.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::Read,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A cold build of helm takes minutes (2.5 on 2 busy cores); the bound is for a build that hangs.
const BUILD_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The path of tool `name` (`helm`, `actionlint`), building it on first use. The build prints
/// its progress on this process's stderr; concurrent callers wait for one build.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let mut command = Command::new("bash");
    command
        .arg(format!("{REPO}/tests/tools/build.sh"))
        .arg(name)
        .stderr(Stdio::inherit());
    let what = format!("tests/tools/build.sh {name}");
    let output = spawn_and_wait(&what, command, BUILD_DEADLINE);
    assert!(
        output.status.success(),
        "tests/tools/build.sh {name} failed (its messages are above)"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints a path")
            .trim(),
    );
    built.insert(name.to_string(), path.clone());
    path
}

/// Run `command` to completion with a deadline: its output, or a panic naming `what` once the
/// deadline passed (the process is killed then, and when this process dies).
pub fn run_with_deadline(what: &str, mut command: Command, deadline: Duration) -> Output {
    command.stderr(Stdio::piped());
    spawn_and_wait(what, command, deadline)
}

/// `run_with_deadline` with stderr as the command has it (inherited unless set).
fn spawn_and_wait(what: &str, mut command: Command, deadline: Duration) -> Output {
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Drained while it runs, so a full pipe never stalls it.
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {deadline:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
