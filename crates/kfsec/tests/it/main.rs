//! Integration tests: one binary that boots real kfsec servers on 127.0.0.1:0 and drives them
//! with real clients (HTTP/2 over TLS, an OpenID Connect relying party, openssl, the CLI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

mod admission;
mod attacks;
mod audit_events;
mod audit_log;
mod audit_surfaces;
mod dashboard_api;
mod dashboard_pages;
mod device;
mod discovery;
mod fake_entra;
mod fake_op;
mod fed_flow;
mod fed_ldap;
mod fed_microsoft;
mod fed_oidc;
mod fed_session;
mod flow;
mod harness;
mod ingress;
mod keys;
mod kube_clients;
mod leader;
mod metrics;
mod oauth2_paths;
mod oidc;
mod openapi;
mod pipeline_ui;
mod pki_shared;
mod process;
mod proxying;
mod rbac;
mod rotation;
mod sec_authn;
mod sec_connections;
mod sec_headers;
mod sec_login;
mod sec_logs;
mod sec_paths;
mod sec_refusals;
mod sec_tenancy;
mod sec_webhooks;
mod secrets_at_rest;
mod slapd;
mod store_etcd;
