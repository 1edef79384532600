//! The commands besides tracing: `doctor` (what this kernel offers and what
//! oomtrace will use) and `rank` (who the kernel would kill next).

pub mod doctor;
pub mod rank;
