//! AdmissionReview fixtures: every `tests/fixtures/<path>/<case>.request.json` is run through
//! [`kfsec_admission::review`] with the webhook served at `/<path>` and compared with
//! `<case>.response.json` (uid and apiVersion echoed, patches base64-decoded and compared as JSON).
//! The context comes from `<path>/context.json`, or `<case>.context.json` when present.
//! `BLESS=1 cargo test -p kfsec-admission --test fixtures` rewrites the response files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use kfsec_admission::{Context, Settings, all_webhooks, review, webhook_for_path};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn context_from(v: &Value) -> Context {
    let mut settings = Settings::default();
    if let Some(p) = v.get("pvcviewerDefaultPodSpec") {
        settings.pvcviewer.default_pod_spec = Some(p.clone());
    }
    let labels: BTreeMap<String, String> = v
        .get("namespaceLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let pds = v
        .get("podDefaults")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let objects = v.get("objects").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut ctx = Context::default().with_pod_defaults(&pds).with_objects(objects);
    ctx.namespace_labels = labels;
    ctx.settings = Arc::new(settings);
    ctx
}

fn decode_patch(v: &Value) -> Value {
    let b64 = v.as_str().expect("patch is a base64 string");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is base64");
    serde_json::from_slice(&raw).expect("patch is JSON")
}

struct Case {
    hook_path: String,
    name: String,
    request: PathBuf,
    response: PathBuf,
    context: Context,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let hook = dir.file_name().unwrap().to_string_lossy().to_string();
        let base_ctx = dir.join("context.json");
        let base = if base_ctx.exists() {
            read_json(&base_ctx)
        } else {
            Value::Null
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let fname = f.file_name().unwrap().to_string_lossy().to_string();
            let Some(case) = fname.strip_suffix(".request.json") else {
                continue;
            };
            let case_ctx = dir.join(format!("{case}.context.json"));
            let ctx = if case_ctx.exists() {
                read_json(&case_ctx)
            } else {
                base.clone()
            };
            out.push(Case {
                hook_path: format!("/{hook}"),
                name: case.to_string(),
                response: dir.join(format!("{case}.response.json")),
                request: f,
                context: context_from(&ctx),
            });
        }
    }
    out
}

#[test]
fn every_webhook_has_fixtures() {
    let all = cases();
    for w in all_webhooks() {
        let n = all.iter().filter(|c| c.hook_path == w.path()).count();
        assert!(n >= 2, "{} has {n} fixture cases", w.path());
    }
}

#[test]
fn fixtures_match() {
    let bless = std::env::var_os("BLESS").is_some();
    let all = cases();
    assert!(!all.is_empty());
    let mut failures = Vec::new();
    for case in &all {
        let label = format!("{}/{}", case.hook_path, case.name);
        let webhook = webhook_for_path(&case.hook_path).unwrap_or_else(|| panic!("no webhook for {label}"));
        let body = fs::read(&case.request).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        let actual_bytes = review(&body, webhook.as_ref(), &case.context).unwrap_or_else(|e| panic!("{label}: {e}"));
        let actual: Value = serde_json::from_slice(&actual_bytes).unwrap();

        // The envelope is echoed whatever the outcome.
        assert_eq!(actual["apiVersion"], request["apiVersion"], "{label}: apiVersion");
        assert_eq!(actual["kind"], "AdmissionReview", "{label}: kind");
        assert_eq!(actual["response"]["uid"], request["request"]["uid"], "{label}: uid");
        // A patch always applies to the object it was computed for.
        if let Some(p) = actual["response"].get("patch") {
            assert_eq!(actual["response"]["patchType"], "JSONPatch", "{label}");
            let patch: json_patch::Patch = serde_json::from_value(decode_patch(p)).unwrap();
            let mut obj = request["request"]["object"].clone();
            json_patch::patch(&mut obj, &patch).unwrap_or_else(|e| panic!("{label}: patch does not apply: {e}"));
        }

        if bless {
            let mut text = serde_json::to_string_pretty(&actual).unwrap();
            text.push('\n');
            fs::write(&case.response, text).unwrap();
            continue;
        }
        let expected = read_json(&case.response);
        let split = |v: &Value| {
            let mut v = v.clone();
            let patch = v["response"].as_object_mut().and_then(|r| r.remove("patch"));
            (v, patch.map(|p| decode_patch(&p)))
        };
        let (a, a_patch) = split(&actual);
        let (e, e_patch) = split(&expected);
        if a != e || a_patch != e_patch {
            failures.push(format!(
                "{label}:\n  expected {}\n  patch    {}\n  actual   {}\n  patch    {}",
                e,
                e_patch.unwrap_or(Value::Null),
                a,
                a_patch.unwrap_or(Value::Null)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
