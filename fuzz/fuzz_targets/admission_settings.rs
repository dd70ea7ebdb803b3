//! `KatibSettings::from_config_map` and `KServeSettings::from_config_map` on arbitrary ConfigMap
//! data: never panic; a list read from the ConfigMap (one that is not the default) is sorted, without duplicates or empty
//! names; reading is deterministic.
//!
//! Input: a JSON object of strings used as the ConfigMap's `data`; any other input is used as
//! the text of each key the two readers look at, one at a time.

#![no_main]

use std::collections::BTreeMap;

use kfsec_admission::katib::KatibSettings;
use kfsec_admission::kserve::KServeSettings;
use kfsec_admission::settings::config_map_data;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const KEYS: &[&str] = &[
    "katib-config.yaml",
    "suggestion",
    "early-stopping",
    "metrics-collector-sidecar",
    "deploy",
    "security",
    "explainers",
    "inferenceService",
];

fn check(data: &BTreeMap<String, String>) {
    let katib = KatibSettings::from_config_map(data);
    if let Ok(k) = &katib {
        let d = KatibSettings::default();
        for (list, default) in [
            (&k.suggestion_algorithms, &d.suggestion_algorithms),
            (&k.early_stopping_algorithms, &d.early_stopping_algorithms),
            (&k.metrics_collectors, &d.metrics_collectors),
        ] {
            if list == default {
                continue; // not mentioned by the ConfigMap
            }
            assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates: {list:?}");
            assert!(list.iter().all(|n| !n.is_empty()), "no empty names: {list:?}");
        }
    }
    assert_eq!(
        format!("{katib:?}"),
        format!("{:?}", KatibSettings::from_config_map(data)),
        "deterministic"
    );
    let kserve = KServeSettings::from_config_map(data);
    assert_eq!(
        format!("{kserve:?}"),
        format!("{:?}", KServeSettings::from_config_map(data))
    );
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
        if let Ok(data) = config_map_data("fuzz", &json!({ "data": v })) {
            check(&data);
        }
        return;
    }
    for key in KEYS {
        check(&BTreeMap::from([((*key).to_owned(), text.to_owned())]));
    }
});
