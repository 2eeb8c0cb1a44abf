//! The output folder lock, held by real processes.

mod common;

use std::time::Duration;

use common::{wait_for_line, Fixture};
use ihs_engine::{exit_code, EngineError, OutputLock};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the kernel's host name, which `gethostname(2)` also returns.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn live_holder_named() {
    let fixture = Fixture::new();
    let out = fixture.out();
    let mut holder = fixture.spawn(&["hold-lock", "out"], &[]);
    let line = wait_for_line(&mut holder, "LOCKED", TIMEOUT);
    assert_eq!(line, format!("LOCKED {}", holder.id()));

    let error = OutputLock::acquire(&out).unwrap_err();
    let EngineError::Locked {
        holder: Some(recorded),
        ..
    } = &error
    else {
        panic!("expected a lock error naming the holder, got {error}");
    };
    assert_eq!(recorded.pid, holder.id());
    assert_eq!(recorded.host, host());
    assert_eq!(recorded.is_alive_here(), Some(true));
    assert_eq!(error.exit_code(), exit_code::LOCKED);
    let message = error.to_string();
    assert!(
        message.contains(&format!("pid {} on host {}", holder.id(), host())),
        "{message}"
    );

    // A second run on the same outputs exits with code 3 and names the holder.
    let run = fixture.toy(&["run", "spec.yaml"], &[]);
    assert_eq!(run.status.code(), Some(exit_code::LOCKED));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&format!("pid {}", holder.id())), "{stderr}");
    assert!(
        !fixture.path("out/tiny").exists(),
        "a locked run wrote outputs"
    );

    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn dead_holder_taken_over() {
    let fixture = Fixture::new();
    let out = fixture.out();
    let mut holder = fixture.spawn(&["hold-lock", "out"], &[]);
    wait_for_line(&mut holder, "LOCKED", TIMEOUT);
    let pid = holder.id();
    holder.kill().unwrap();
    holder.wait().unwrap();

    let recorded = OutputLock::recorded_holder(&out).expect("the dead holder's record stays");
    assert_eq!(recorded.pid, pid);
    assert_eq!(recorded.is_alive_here(), Some(false));

    let lock = OutputLock::acquire(&out).expect("a dead holder's lock is taken over");
    let previous = lock
        .previous_holder()
        .expect("the takeover names the old holder");
    assert_eq!(previous.pid, pid);
    assert_eq!(
        OutputLock::recorded_holder(&out).map(|holder| holder.pid),
        Some(std::process::id())
    );
    drop(lock);
    assert_eq!(OutputLock::recorded_holder(&out), None);
}

#[test]
fn run_reports_takeover() {
    let fixture = Fixture::new();
    let mut holder = fixture.spawn(&["hold-lock", "out"], &[]);
    wait_for_line(&mut holder, "LOCKED", TIMEOUT);
    let pid = holder.id();
    holder.kill().unwrap();
    holder.wait().unwrap();

    let report = fixture.run();
    assert_eq!(report.exit_code(), exit_code::OK, "{report}");
    assert_eq!(report.lock_takeover.map(|holder| holder.pid), Some(pid));
}

#[test]
fn second_lock_in_same_process_rejected() {
    let fixture = Fixture::new();
    let out = fixture.out();
    let first = OutputLock::acquire(&out).unwrap();
    let error = OutputLock::acquire(&out).unwrap_err();
    assert!(
        matches!(&error, EngineError::Locked { holder: Some(holder), .. } if holder.pid == std::process::id()),
        "{error}"
    );
    drop(first);
    OutputLock::acquire(&out).expect("released when dropped");
}
