//! `apply_poddefaults` on arbitrary JSON: never panics, and when it succeeds PodDefaults have only
//! added to the pod (nothing removed or rewritten except serviceAccountName,
//! automountServiceAccountToken and the poddefault annotations).
//!
//! Input: `[pod, poddefault...]`, or `{"pod": …, "podDefaults": [...]}`, or any other JSON value
//! used as the pod with a fixed set of PodDefaults.

#![no_main]

use kfsec_admission::apply_poddefaults;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn fixed() -> Vec<Value> {
    vec![
        json!({"metadata": {"name": "a", "resourceVersion": "1"},
               "spec": {"selector": {}, "env": [{"name": "X", "value": "1"}],
                        "volumeMounts": [{"name": "v", "mountPath": "/v"}], "volumes": [{"name": "v", "emptyDir": {}}],
                        "labels": {"l": "1"}, "command": ["sh"]}}),
        json!({"metadata": {"name": "b", "resourceVersion": "2"},
               "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]},
                        "tolerations": [{"key": "k", "operator": "Exists"}], "sidecars": [{"name": "s"}],
                        "automountServiceAccountToken": false}}),
    ]
}

fn allowed_rewrite(path: &[String]) -> bool {
    match path {
        [spec, f] if spec == "spec" => f == "serviceAccountName" || f == "automountServiceAccountToken",
        [meta, ann, k] if meta == "metadata" && ann == "annotations" => {
            k.starts_with("poddefault.admission.kubeflow.org/poddefault-")
        }
        _ => false,
    }
}

/// True if `new` only adds to `old`.
fn only_adds(old: &Value, new: &Value, path: &mut Vec<String>) -> bool {
    if old.is_null() || allowed_rewrite(path) {
        return true;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => o.iter().all(|(k, ov)| {
            path.push(k.clone());
            let ok = n.get(k).is_some_and(|nv| only_adds(ov, nv, path)) || (ov.is_null() && !n.contains_key(k));
            path.pop();
            ok
        }),
        (Value::Array(o), Value::Array(n)) => {
            n.len() >= o.len()
                && o.iter().zip(n).enumerate().all(|(i, (ov, nv))| {
                    path.push(i.to_string());
                    let ok = only_adds(ov, nv, path);
                    path.pop();
                    ok
                })
        }
        _ => old == new,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(data) else { return };
    let (pod, pds) = match input {
        Value::Array(mut items) if !items.is_empty() => {
            let pod = items.remove(0);
            (pod, items)
        }
        Value::Object(ref m) if m.contains_key("pod") => (
            m["pod"].clone(),
            m.get("podDefaults").and_then(Value::as_array).cloned().unwrap_or_default(),
        ),
        other => (other, fixed()),
    };
    if let Ok(out) = apply_poddefaults(&pod, &pds) {
        assert!(only_adds(&pod, &out, &mut Vec::new()), "removed or rewrote data:\n{pod}\n=>\n{out}");
    }
});
