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
