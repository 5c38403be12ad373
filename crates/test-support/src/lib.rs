//! What the workspace's tests share, defined once: a dev-dependency of the crates' tests,
//! never a dependency of production code.
