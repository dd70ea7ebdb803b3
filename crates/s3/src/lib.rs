//! `kfsec-s3`: the S3 gateway's logic — AWS Signature Version 4 verification and signing, the
//! aws-chunked body decoder, streaming checksums, the per-namespace prefix policy and S3's XML
//! errors. Invariants: no request reaches the upstream unless its signature verified against a
//! live key and the policy allowed its bucket and key; secrets are compared in constant time
//! and never logged or rendered.

pub mod checksum;
pub mod chunked;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod keystore;
pub mod listing;
pub mod policy;
pub mod purge;
pub mod sigv4;
pub mod upstream;
