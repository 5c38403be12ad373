//! `sqlx::migrate!` embeds `migrations/` at compile time, but a proc macro cannot tell cargo to
//! watch a directory on stable Rust: without this, adding a migration file leaves a stale
//! binary that does not know it (as sqlx's own documentation of `migrate!` warns).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
