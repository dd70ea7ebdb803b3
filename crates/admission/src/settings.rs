//! The webhook settings a real deployment keeps in ConfigMaps, read the way the upstream
//! controllers read them: Katib's `katib-config` and KServe's `inferenceservice-config`.
//!
//! Invariants: pure functions of the ConfigMap's `data` (no IO); an absent ConfigMap means the
//! shipped defaults, but a present one that cannot be read is an error naming the ConfigMap and
//! key, never a silent fallback (a webhook must not admit on settings the operator did not
//! write); no input makes anything here panic (fuzzed by `fuzz_targets/admission_settings`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::katib::KatibSettings;
use crate::kserve::KServeSettings;

/// Name of Katib's ConfigMap (in Katib's namespace, `KATIB_CORE_NAMESPACE`).
pub const KATIB_CONFIG_MAP: &str = "katib-config";
/// Name of KServe's ConfigMap (in KServe's namespace).
pub const KSERVE_CONFIG_MAP: &str = "inferenceservice-config";

/// The `data` key of Katib's current format (a `KatibConfig` YAML document, Katib ≥ 0.16).
const KATIB_YAML_KEY: &str = "katib-config.yaml";
/// The data keys of Katib's earlier format (each a JSON object keyed by name).
const KATIB_SUGGESTION_KEY: &str = "suggestion";
const KATIB_EARLY_STOPPING_KEY: &str = "early-stopping";
const KATIB_COLLECTOR_KEY: &str = "metrics-collector-sidecar";

/// The deployment modes KServe's `deploy.defaultDeploymentMode` accepts.
const KSERVE_DEPLOYMENT_MODES: &[&str] = &["Serverless", "RawDeployment", "ModelMesh", "Standard", "Knative"];

/// Why a settings ConfigMap could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A key holds text that is not the document it must be.
    #[error("ConfigMap {config_map}: key {key:?} is not valid: {reason}")]
    Invalid {
        /// The ConfigMap.
        config_map: &'static str,
        /// The data key.
        key: &'static str,
        /// What is wrong (parser message or rule).
        reason: String,
    },
    /// None of the keys the controller reads is present.
    #[error("ConfigMap {config_map} has none of the keys {expected}")]
    Empty {
        /// The ConfigMap.
        config_map: &'static str,
        /// The keys looked for.
        expected: &'static str,
    },
}

fn invalid(config_map: &'static str, key: &'static str, reason: impl std::fmt::Display) -> SettingsError {
    SettingsError::Invalid {
        config_map,
        key,
        reason: reason.to_string(),
    }
}

/// The `data` of a ConfigMap object (`null` or absent reads as empty). Values that are not
/// strings make the ConfigMap invalid, as they do for the API server.
pub fn config_map_data(config_map: &'static str, object: &Value) -> Result<BTreeMap<String, String>, SettingsError> {
    match object.get("data") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(invalid(config_map, "data", format!("value of {k:?} is not a string"))),
            })
            .collect(),
        Some(_) => Err(invalid(config_map, "data", "not an object")),
    }
}

// ---------------------------------------------------------------------------------------------
// Katib

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KatibConfigDoc {
    #[serde(default)]
    runtime: Option<KatibRuntime>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KatibRuntime {
    #[serde(default)]
    suggestions: Option<Vec<KatibAlgorithm>>,
    #[serde(default)]
    early_stoppings: Option<Vec<KatibAlgorithm>>,
    #[serde(default)]
    metrics_collectors: Option<Vec<KatibCollector>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KatibAlgorithm {
    #[serde(default)]
    algorithm_name: String,
    #[serde(default)]
    image: String,
}

#[derive(Deserialize)]
struct KatibCollector {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    image: String,
}

#[derive(Deserialize)]
struct ImageOnly {
    #[serde(default)]
    image: String,
}

/// Names in `entries` that carry an image (Katib refuses an algorithm or collector whose image
/// is not configured), sorted and without duplicates.
fn with_image<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut names: Vec<String> = entries
        .filter(|(name, image)| !name.is_empty() && !image.is_empty())
        .map(|(name, _)| name.to_owned())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// One JSON key of Katib's earlier format: `{"name": {"image": …, …}, …}`.
fn katib_json_key(data: &BTreeMap<String, String>, key: &'static str) -> Result<Option<Vec<String>>, SettingsError> {
    let Some(text) = data.get(key) else {
        return Ok(None);
    };
    let map: BTreeMap<String, ImageOnly> = serde_json::from_str(text).map_err(|e| invalid(KATIB_CONFIG_MAP, key, e))?;
    Ok(Some(with_image(
        map.iter().map(|(n, c)| (n.as_str(), c.image.as_str())),
    )))
}

impl KatibSettings {
    /// Reads `katib-config`'s `data`: the `katib-config.yaml` document when present (Katib's
    /// current format), otherwise the `suggestion`, `early-stopping` and
    /// `metrics-collector-sidecar` JSON keys. A list the ConfigMap does not mention keeps its
    /// default; an entry without an image is not usable (as in Katib).
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mut settings = Self::default();
        if let Some(text) = data.get(KATIB_YAML_KEY) {
            let doc: KatibConfigDoc = if text.trim().is_empty() {
                KatibConfigDoc::default()
            } else {
                serde_saphyr::from_str(text).map_err(|e| invalid(KATIB_CONFIG_MAP, KATIB_YAML_KEY, e))?
            };
            let runtime = doc.runtime.unwrap_or_default();
            if let Some(s) = runtime.suggestions {
                settings.suggestion_algorithms =
                    with_image(s.iter().map(|a| (a.algorithm_name.as_str(), a.image.as_str())));
            }
            if let Some(s) = runtime.early_stoppings {
                settings.early_stopping_algorithms =
                    with_image(s.iter().map(|a| (a.algorithm_name.as_str(), a.image.as_str())));
            }
            if let Some(c) = runtime.metrics_collectors {
                settings.metrics_collectors = with_image(c.iter().map(|c| (c.kind.as_str(), c.image.as_str())));
            }
            return Ok(settings);
        }
        let suggestions = katib_json_key(data, KATIB_SUGGESTION_KEY)?;
        let early = katib_json_key(data, KATIB_EARLY_STOPPING_KEY)?;
        let collectors = katib_json_key(data, KATIB_COLLECTOR_KEY)?;
        if suggestions.is_none() && early.is_none() && collectors.is_none() {
            return Err(SettingsError::Empty {
                config_map: KATIB_CONFIG_MAP,
                expected: "katib-config.yaml, suggestion, early-stopping, metrics-collector-sidecar",
            });
        }
        if let Some(v) = suggestions {
            settings.suggestion_algorithms = v;
        }
        if let Some(v) = early {
            settings.early_stopping_algorithms = v;
        }
        if let Some(v) = collectors {
            settings.metrics_collectors = v;
        }
        Ok(settings)
    }
}

// ---------------------------------------------------------------------------------------------
// KServe

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KServeDeploy {
    #[serde(default)]
    default_deployment_mode: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KServeSecurity {
    #[serde(default)]
    auto_mount_service_account_token: Option<bool>,
}

#[derive(Deserialize, Default)]
struct KServeExplainers {
    #[serde(default)]
    art: Option<KServeExplainer>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KServeExplainer {
    #[serde(default)]
    default_image_version: String,
}

#[derive(Deserialize, Default)]
struct KServeInferenceService {
    #[serde(default)]
    resource: Option<KServeResource>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KServeResource {
    #[serde(default)]
    cpu_request: Option<String>,
    #[serde(default)]
    memory_request: Option<String>,
    #[serde(default)]
    cpu_limit: Option<String>,
    #[serde(default)]
    memory_limit: Option<String>,
}

/// One JSON key of `inferenceservice-config`, or its default when absent.
fn kserve_key<T: for<'de> Deserialize<'de> + Default>(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<T, SettingsError> {
    match data.get(key) {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| invalid(KSERVE_CONFIG_MAP, key, e)),
    }
}

impl KServeSettings {
    /// Reads `inferenceservice-config`'s `data`: `deploy.defaultDeploymentMode`,
    /// `security.autoMountServiceAccountToken`, `explainers.art.defaultImageVersion` and
    /// `inferenceService.resource.{cpu,memory}{Request,Limit}` (each a JSON document, as KServe
    /// reads them). A key or member the ConfigMap does not set keeps its shipped default; an
    /// empty resource value means "none", as in KServe.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mut settings = Self::default();
        let deploy: KServeDeploy = kserve_key(data, "deploy")?;
        if !deploy.default_deployment_mode.is_empty() {
            if !KSERVE_DEPLOYMENT_MODES.contains(&deploy.default_deployment_mode.as_str()) {
                return Err(invalid(
                    KSERVE_CONFIG_MAP,
                    "deploy",
                    format!(
                        "defaultDeploymentMode {:?} is not one of {}",
                        deploy.default_deployment_mode,
                        KSERVE_DEPLOYMENT_MODES.join(", ")
                    ),
                ));
            }
            settings.default_deployment_mode = deploy.default_deployment_mode;
        }
        let security: KServeSecurity = kserve_key(data, "security")?;
        if let Some(v) = security.auto_mount_service_account_token {
            settings.auto_mount_service_account_token = v;
        }
        let explainers: KServeExplainers = kserve_key(data, "explainers")?;
        if let Some(v) = explainers
            .art
            .map(|a| a.default_image_version)
            .filter(|v| !v.is_empty())
        {
            settings.art_default_image_version = v;
        }
        let isvc: KServeInferenceService = kserve_key(data, "inferenceService")?;
        if let Some(r) = isvc.resource {
            let set = |slot: &mut String, v: Option<String>| {
                if let Some(v) = v {
                    *slot = v;
                }
            };
            set(&mut settings.cpu_request, r.cpu_request);
            set(&mut settings.memory_request, r.memory_request);
            set(&mut settings.cpu_limit, r.cpu_limit);
            set(&mut settings.memory_limit, r.memory_limit);
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const KATIB_YAML: &str = r#"
apiVersion: config.kubeflow.org/v1beta1
kind: KatibConfig
init:
  controller:
    webhookPort: 8443
    trialResources:
      - Job.v1.batch
runtime:
  metricsCollectors:
    - kind: StdOut
      image: docker.io/kubeflowkatib/file-metrics-collector:v0.17.0
    - kind: TensorFlowEvent
      image: docker.io/kubeflowkatib/tfevent-metrics-collector:v0.17.0
      resources:
        limits:
          memory: 1Gi
  suggestions:
    - algorithmName: random
      image: docker.io/kubeflowkatib/suggestion-hyperopt:v0.17.0
    - algorithmName: tpe
      image: docker.io/kubeflowkatib/suggestion-hyperopt:v0.17.0
    - algorithmName: noimage
  earlyStoppings:
    - algorithmName: medianstop
      image: docker.io/kubeflowkatib/earlystopping-medianstop:v0.17.0
"#;

    #[test]
    fn katib_current_format_lists_what_has_an_image() {
        let s = KatibSettings::from_config_map(&data(&[(KATIB_YAML_KEY, KATIB_YAML)])).unwrap();
        assert_eq!(s.suggestion_algorithms, vec!["random", "tpe"]);
        assert_eq!(s.early_stopping_algorithms, vec!["medianstop"]);
        assert_eq!(s.metrics_collectors, vec!["StdOut", "TensorFlowEvent"]);
    }

    #[test]
    fn katib_lists_not_mentioned_keep_their_defaults() {
        let yaml = "runtime:\n  suggestions:\n    - algorithmName: grid\n      image: x\n";
        let s = KatibSettings::from_config_map(&data(&[(KATIB_YAML_KEY, yaml)])).unwrap();
        assert_eq!(s.suggestion_algorithms, vec!["grid"]);
        let d = KatibSettings::default();
        assert_eq!(s.early_stopping_algorithms, d.early_stopping_algorithms);
        assert_eq!(s.metrics_collectors, d.metrics_collectors);
    }

    #[test]
    fn katib_earlier_json_format() {
        let s = KatibSettings::from_config_map(&data(&[
            ("suggestion", r#"{"random": {"image": "a"}, "enas": {"image": ""}}"#),
            (
                "metrics-collector-sidecar",
                r#"{"File": {"image": "f", "imagePullPolicy": "Always"}}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(s.suggestion_algorithms, vec!["random"]);
        assert_eq!(s.metrics_collectors, vec!["File"]);
        assert_eq!(
            s.early_stopping_algorithms,
            KatibSettings::default().early_stopping_algorithms
        );
    }

    #[test]
    fn katib_unreadable_config_is_an_error_naming_the_key() {
        for (d, key) in [
            (data(&[(KATIB_YAML_KEY, "runtime: [unclosed")]), KATIB_YAML_KEY),
            (
                data(&[(KATIB_YAML_KEY, "runtime:\n  suggestions: 3\n")]),
                KATIB_YAML_KEY,
            ),
            (data(&[("suggestion", "{not json")]), "suggestion"),
            (data(&[("early-stopping", "[]")]), "early-stopping"),
        ] {
            let e = KatibSettings::from_config_map(&d).unwrap_err();
            assert!(matches!(e, SettingsError::Invalid { key: k, .. } if k == key), "{e}");
            assert!(e.to_string().contains("katib-config"), "{e}");
        }
        let e = KatibSettings::from_config_map(&data(&[("unrelated", "x")])).unwrap_err();
        assert!(matches!(e, SettingsError::Empty { .. }), "{e}");
    }

    #[test]
    fn kserve_reads_each_key_and_keeps_defaults_for_the_rest() {
        let s = KServeSettings::from_config_map(&data(&[
            ("deploy", r#"{"defaultDeploymentMode": "RawDeployment"}"#),
            ("security", r#"{"autoMountServiceAccountToken": false}"#),
            (
                "explainers",
                r#"{"art": {"image": "kserve/art-explainer", "defaultImageVersion": "v0.14"}}"#,
            ),
            (
                "inferenceService",
                r#"{"resource": {"cpuLimit": "", "memoryLimit": "4Gi"}}"#,
            ),
            (
                "ingress",
                r#"{"ingressGateway": "knative-serving/knative-ingress-gateway"}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(s.default_deployment_mode, "RawDeployment");
        assert!(!s.auto_mount_service_account_token);
        assert_eq!(s.art_default_image_version, "v0.14");
        assert_eq!(s.cpu_limit, "");
        assert_eq!(s.memory_limit, "4Gi");
        let d = KServeSettings::default();
        assert_eq!((&s.cpu_request, &s.memory_request), (&d.cpu_request, &d.memory_request));
        assert_eq!(KServeSettings::from_config_map(&BTreeMap::new()).unwrap(), d);
    }

    #[test]
    fn kserve_unreadable_config_is_an_error_naming_the_key() {
        for (key, text) in [
            ("deploy", r#"{"defaultDeploymentMode": "Sideways"}"#),
            ("deploy", "{"),
            ("security", r#"{"autoMountServiceAccountToken": "yes"}"#),
            ("inferenceService", r#"{"resource": {"cpuLimit": 1}}"#),
        ] {
            let e = KServeSettings::from_config_map(&data(&[(key, text)])).unwrap_err();
            assert!(matches!(&e, SettingsError::Invalid { key: k, .. } if *k == key), "{e}");
            assert!(e.to_string().contains("inferenceservice-config"), "{e}");
        }
    }

    #[test]
    fn config_map_data_accepts_only_string_values() {
        assert!(config_map_data(KSERVE_CONFIG_MAP, &json!({})).unwrap().is_empty());
        assert!(
            config_map_data(KSERVE_CONFIG_MAP, &json!({"data": null}))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            config_map_data(KSERVE_CONFIG_MAP, &json!({"data": {"a": "b"}})).unwrap(),
            data(&[("a", "b")])
        );
        assert!(config_map_data(KSERVE_CONFIG_MAP, &json!({"data": {"a": 1}})).is_err());
        assert!(config_map_data(KSERVE_CONFIG_MAP, &json!({"data": []})).is_err());
    }
}
