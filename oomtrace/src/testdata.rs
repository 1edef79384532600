//! The real samples under `tests/data/`, for unit tests.

use std::{fs, path::Path};

/// `tests/data/<dir>/<name>`; panics with the path when it cannot be read.
pub fn read(dir: &str, name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A file of a real node (`tests/data/node`).
pub fn node(name: &str) -> String {
    read("node", name)
}
