//! Child processes of a test: a guard that kills and reaps its child when dropped, so a test
//! that panics before it stops a child leaves no process running.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};

/// A child process that is killed (SIGKILL) and waited for on drop unless it has exited.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded (the caller stops it).
    pub fn into_inner(mut self) -> Child {
        self.0
            .take()
            .expect("a guard holds its child until dropped")
    }
}

/// `Command::spawn`, with the child guarded.
pub trait SpawnGuarded {
    /// Starts the command; the child is killed when the guard drops.
    fn spawn_guarded(&mut self) -> std::io::Result<ChildGuard>;
}

impl SpawnGuarded for Command {
    fn spawn_guarded(&mut self) -> std::io::Result<ChildGuard> {
        self.spawn().map(ChildGuard::new)
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        Self::new(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0
            .as_ref()
            .expect("a guard holds its child until dropped")
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("a guard holds its child until dropped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a process with this id exists (a zombie counts: it has not been waited for).
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_child() {
        let guard = Command::new("sleep").arg("30").spawn_guarded().unwrap();
        let pid = guard.id();
        assert!(exists(pid));
        drop(guard);
        assert!(!exists(pid), "the child outlived its guard");
    }

    #[test]
    fn a_guard_unwinding_from_a_panic_kills_its_child() {
        let (tx, rx) = std::sync::mpsc::channel();
        let failed = std::thread::spawn(move || {
            let guard = Command::new("sleep").arg("30").spawn_guarded().unwrap();
            tx.send(guard.id()).unwrap();
            panic!("a failing test");
        })
        .join();
        assert!(failed.is_err());
        let pid = rx.recv().unwrap();
        assert!(!exists(pid), "the child outlived the panicking test");
    }

    #[test]
    fn a_released_child_is_left_running() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn_guarded()
            .unwrap()
            .into_inner();
        assert!(exists(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
