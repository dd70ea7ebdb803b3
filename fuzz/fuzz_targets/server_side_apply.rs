//! Arbitrary bytes as server-side apply input through kfsec-api's `managed` module: the part
//! before the first NUL byte is the live object, the rest the applied configuration, both
//! decoded as apply bodies (YAML or JSON, under the alias/depth budget). It never panics; an
//! apply's result is an object; applying the same configuration again is a no-op (same object,
//! same managers); every manager's field set survives the FieldsV1 round trip, and the
//! `managedFields` JSON reads back as the same entries; a non-apply write of the result by
//! another manager keeps the result applyable.

#![no_main]

use kfsec_api::managed::{self, FieldSet, Writer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The body limit the fuzzed bodies decode under.
const MAX: usize = 64 * 1024;

fn writer(manager: &str) -> Writer<'_> {
    Writer {
        manager,
        api_version: "v1",
        subresource: "",
        has_status: false,
        now: "2026-01-01T00:00:00Z",
    }
}

fn check_entries(entries: &[managed::Entry]) {
    for e in entries {
        let v1 = e.set.to_fields_v1();
        assert_eq!(FieldSet::from_fields_v1(&v1).as_ref(), Some(&e.set), "FieldsV1 round trip");
    }
    if let Some(mf) = managed::encode(entries.to_vec()) {
        let obj = serde_json::json!({"metadata": {"managedFields": mf}});
        let back = managed::entries_of(&obj);
        assert_eq!(back.len(), entries.iter().filter(|e| !e.set.is_empty()).count());
    }
}

fuzz_target!(|data: &[u8]| {
    let (live, cfg) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(cfg) = managed::decode_config(cfg, false, MAX) else { return };
    let live = managed::decode_config(live, false, MAX).ok().filter(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    let w = writer("fuzz");
    for force in [false, true] {
        let Ok((obj, entries)) = managed::apply(&[], live.as_ref(), &cfg, &w, force) else {
            continue;
        };
        assert!(obj.is_object(), "result is an object");
        check_entries(&entries);
        let (again, entries2) = managed::apply(&entries, Some(&obj), &cfg, &w, false).expect("re-apply");
        assert_eq!(again, obj, "re-applying changed the object");
        assert_eq!(entries2, entries, "re-applying changed the managers");
        // Another writer's update, then the applier again (forced): still an object.
        let mut edited = obj.clone();
        if let Value::Object(m) = &mut edited {
            m.insert("fuzzEdit".into(), Value::Bool(true));
        }
        let after = managed::update(&entries, &obj, &edited, &writer("other"));
        check_entries(&after);
        let (last, _) = managed::apply(&after, Some(&edited), &cfg, &w, true).expect("forced re-apply");
        assert!(last.is_object());
    }
});
