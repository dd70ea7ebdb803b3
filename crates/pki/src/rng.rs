//! The operating-system CSPRNG behind [`kfsec_types::Rng`].
//!
//! Invariant: a failure of the CSPRNG aborts the process; it never yields zeros or partial output.

use kfsec_types::Rng;

/// Secure random bytes from aws-lc-rs (which draws on the OS entropy source).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    #[allow(clippy::disallowed_methods)] // the one home of the CSPRNG behind kfsec_types::Rng
    fn fill(&self, buf: &mut [u8]) {
        if aws_lc_rs::rand::fill(buf).is_err() {
            tracing::error!("the system CSPRNG failed; aborting rather than use predictable bytes");
            eprintln!("kfsec: fatal: the system CSPRNG failed; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_with_nonzero_distinct_bytes() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        OsRng.fill(&mut a);
        OsRng.fill(&mut b);
        assert_ne!(a, [0u8; 32]);
        assert_ne!(a, b);
    }
}
