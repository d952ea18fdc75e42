//! Children die with the build: a build killed with SIGKILL cannot clean up,
//! so every child it starts (apt-get, mkfs.*, cargo install, QEMU, …) is
//! started through `forge::tools` with `PR_SET_PDEATHSIG(SIGKILL)`.
//!
//! The "build" here is this test binary run again as a parent process (the
//! same test, with the role in the environment), which starts a
//! long-running child the way the build does and waits for it; the test
//! kills the parent with SIGKILL and watches the child.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "FORGE_TEST_CHILD_ROLE";

/// Whether `pid` is a live process (a zombie waiting for its reaper is dead).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Runs the parent with `role`, returns (parent, child PID).
fn start_parent(role: &str) -> (std::process::Child, i32) {
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "children_die_with_the_build", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(parent.stdout.take().unwrap()).lines();
    let pid = loop {
        let l = lines.next().expect("the parent ended before starting its child").unwrap();
        if let Some((_, p)) = l.split_once("CHILD ") {
            break p.trim().parse::<i32>().unwrap();
        }
    };
    (parent, pid)
}

/// SIGKILLs the parent; whether the child was gone within two seconds.
fn child_dies_with(mut parent: std::process::Child, child: i32) -> bool {
    assert!(alive(child), "the child {child} is not running");
    unsafe { libc::kill(parent.id() as i32, libc::SIGKILL) };
    parent.wait().unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if !alive(child) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn children_die_with_the_build() {
    if let Ok(role) = std::env::var(ROLE) {
        return parent_role(&role);
    }
    for role in ["duct", "macro", "std", "fs-run"] {
        let (parent, child) = start_parent(role);
        assert!(child_dies_with(parent, child), "{role}: the child {child} outlived its parent");
    }
    // The check can fail: a child started without the helper lives on.
    let (parent, child) = start_parent("plain");
    let survived = !child_dies_with(parent, child);
    unsafe { libc::kill(child, libc::SIGKILL) };
    assert!(survived, "a plain child died with its parent: the test proves nothing here");
}

/// The parent process of `children_die_with_the_build` (run by it, with
/// the role in the environment): starts `sleep 60` and waits for it.
fn parent_role(role: &str) {
    let announce = |pid: u32| {
        println!("CHILD {pid}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
    };
    match role {
        "duct" | "macro" => {
            let e = if role == "duct" {
                forge::tools::cmd("sleep", ["60"])
            } else {
                forge::cmd!("sleep", "60")
            };
            let h = e.stdout_null().start().unwrap();
            announce(h.pids()[0]);
            let _ = h.wait();
        }
        "std" | "plain" => {
            let mut c =
                if role == "std" { forge::tools::command("sleep") } else { Command::new("sleep") };
            let mut child = c.arg("60").stdout(Stdio::null()).spawn().unwrap();
            announce(child.id());
            let _ = child.wait();
        }
        "fs-run" => {
            // `fs::run` takes any expression (mkfs.ext4, mkfs.erofs, …) and
            // captures its output: the child tells its PID through the
            // parent's stdout.
            let e = duct::cmd!("sh", "-c", "echo CHILD $$ > /proc/$PPID/fd/1; exec sleep 60");
            let _ = forge::fs::run(e, "sleep");
        }
        r => panic!("unknown role {r}"),
    }
}
