//! Go-compatible rendering and comparison of Kubernetes objects held as JSON: `%#v` of the core/v1
//! types that upstream error messages print, `reflect.DeepEqual` semantics after a JSON decode,
//! `strconv.Quote`, apimachinery's error aggregation and `field.Error` text.
//!
//! Invariants: pure functions over `serde_json::Value`; never panic on any input shape (a value of
//! the wrong JSON type is rendered or compared as raw JSON instead); recursion is bounded by the
//! depth of the input, which serde_json caps at 128 when parsing.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use kfsec_types::meta::strip_nulls;
use serde_json::{Map, Value};

/// How a Go struct field is typed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    /// `string` or a named string type.
    Str,
    /// `bool`.
    Bool,
    /// Any integer type.
    Int,
    /// A pointer, with its Go type spelled as `%#v` prints it (e.g. `*v1.EnvVarSource`).
    Ptr(&'static str),
    /// `[]string`.
    StrSlice,
    /// A slice of structs.
    Slice(&'static Schema),
    /// A map with string keys, with its Go type name (e.g. `v1.ResourceList`); values are quantities.
    QuantityMap(&'static str),
    /// A nested struct value.
    Struct(&'static Schema),
    /// An embedded struct whose fields are inlined in JSON.
    Inline(&'static Schema),
}

/// A Go struct type: its `%#v` name and fields (Go name, JSON name, type), in declaration order.
#[derive(Debug)]
pub(crate) struct Schema {
    pub go_name: &'static str,
    pub fields: &'static [(&'static str, &'static str, Ty)],
}

/// `k8s.io/api/core/v1.EnvVar` (v0.28).
pub(crate) static ENV_VAR: Schema = Schema {
    go_name: "v1.EnvVar",
    fields: &[
        ("Name", "name", Ty::Str),
        ("Value", "value", Ty::Str),
        ("ValueFrom", "valueFrom", Ty::Ptr("*v1.EnvVarSource")),
    ],
};

/// `core/v1.VolumeMount` (v0.28).
pub(crate) static VOLUME_MOUNT: Schema = Schema {
    go_name: "v1.VolumeMount",
    fields: &[
        ("Name", "name", Ty::Str),
        ("ReadOnly", "readOnly", Ty::Bool),
        ("MountPath", "mountPath", Ty::Str),
        ("SubPath", "subPath", Ty::Str),
        (
            "MountPropagation",
            "mountPropagation",
            Ty::Ptr("*v1.MountPropagationMode"),
        ),
        ("SubPathExpr", "subPathExpr", Ty::Str),
    ],
};

/// `core/v1.Toleration`.
pub(crate) static TOLERATION: Schema = Schema {
    go_name: "v1.Toleration",
    fields: &[
        ("Key", "key", Ty::Str),
        ("Operator", "operator", Ty::Str),
        ("Value", "value", Ty::Str),
        ("Effect", "effect", Ty::Str),
        ("TolerationSeconds", "tolerationSeconds", Ty::Ptr("*int64")),
    ],
};

/// `core/v1.LocalObjectReference`.
pub(crate) static LOCAL_OBJECT_REFERENCE: Schema = Schema {
    go_name: "v1.LocalObjectReference",
    fields: &[("Name", "name", Ty::Str)],
};

/// `core/v1.VolumeSource` (v0.28 field order).
pub(crate) static VOLUME_SOURCE: Schema = Schema {
    go_name: "v1.VolumeSource",
    fields: &[
        ("HostPath", "hostPath", Ty::Ptr("*v1.HostPathVolumeSource")),
        ("EmptyDir", "emptyDir", Ty::Ptr("*v1.EmptyDirVolumeSource")),
        (
            "GCEPersistentDisk",
            "gcePersistentDisk",
            Ty::Ptr("*v1.GCEPersistentDiskVolumeSource"),
        ),
        (
            "AWSElasticBlockStore",
            "awsElasticBlockStore",
            Ty::Ptr("*v1.AWSElasticBlockStoreVolumeSource"),
        ),
        ("GitRepo", "gitRepo", Ty::Ptr("*v1.GitRepoVolumeSource")),
        ("Secret", "secret", Ty::Ptr("*v1.SecretVolumeSource")),
        ("NFS", "nfs", Ty::Ptr("*v1.NFSVolumeSource")),
        ("ISCSI", "iscsi", Ty::Ptr("*v1.ISCSIVolumeSource")),
        ("Glusterfs", "glusterfs", Ty::Ptr("*v1.GlusterfsVolumeSource")),
        (
            "PersistentVolumeClaim",
            "persistentVolumeClaim",
            Ty::Ptr("*v1.PersistentVolumeClaimVolumeSource"),
        ),
        ("RBD", "rbd", Ty::Ptr("*v1.RBDVolumeSource")),
        ("FlexVolume", "flexVolume", Ty::Ptr("*v1.FlexVolumeSource")),
        ("Cinder", "cinder", Ty::Ptr("*v1.CinderVolumeSource")),
        ("CephFS", "cephfs", Ty::Ptr("*v1.CephFSVolumeSource")),
        ("Flocker", "flocker", Ty::Ptr("*v1.FlockerVolumeSource")),
        ("DownwardAPI", "downwardAPI", Ty::Ptr("*v1.DownwardAPIVolumeSource")),
        ("FC", "fc", Ty::Ptr("*v1.FCVolumeSource")),
        ("AzureFile", "azureFile", Ty::Ptr("*v1.AzureFileVolumeSource")),
        ("ConfigMap", "configMap", Ty::Ptr("*v1.ConfigMapVolumeSource")),
        (
            "VsphereVolume",
            "vsphereVolume",
            Ty::Ptr("*v1.VsphereVirtualDiskVolumeSource"),
        ),
        ("Quobyte", "quobyte", Ty::Ptr("*v1.QuobyteVolumeSource")),
        ("AzureDisk", "azureDisk", Ty::Ptr("*v1.AzureDiskVolumeSource")),
        (
            "PhotonPersistentDisk",
            "photonPersistentDisk",
            Ty::Ptr("*v1.PhotonPersistentDiskVolumeSource"),
        ),
        ("Projected", "projected", Ty::Ptr("*v1.ProjectedVolumeSource")),
        ("PortworxVolume", "portworxVolume", Ty::Ptr("*v1.PortworxVolumeSource")),
        ("ScaleIO", "scaleIO", Ty::Ptr("*v1.ScaleIOVolumeSource")),
        ("StorageOS", "storageos", Ty::Ptr("*v1.StorageOSVolumeSource")),
        ("CSI", "csi", Ty::Ptr("*v1.CSIVolumeSource")),
        ("Ephemeral", "ephemeral", Ty::Ptr("*v1.EphemeralVolumeSource")),
    ],
};

/// `core/v1.Volume`.
pub(crate) static VOLUME: Schema = Schema {
    go_name: "v1.Volume",
    fields: &[
        ("Name", "name", Ty::Str),
        ("VolumeSource", "", Ty::Inline(&VOLUME_SOURCE)),
    ],
};

static CONTAINER_PORT: Schema = Schema {
    go_name: "v1.ContainerPort",
    fields: &[
        ("Name", "name", Ty::Str),
        ("HostPort", "hostPort", Ty::Int),
        ("ContainerPort", "containerPort", Ty::Int),
        ("Protocol", "protocol", Ty::Str),
        ("HostIP", "hostIP", Ty::Str),
    ],
};

static ENV_FROM_SOURCE: Schema = Schema {
    go_name: "v1.EnvFromSource",
    fields: &[
        ("Prefix", "prefix", Ty::Str),
        ("ConfigMapRef", "configMapRef", Ty::Ptr("*v1.ConfigMapEnvSource")),
        ("SecretRef", "secretRef", Ty::Ptr("*v1.SecretEnvSource")),
    ],
};

static RESOURCE_CLAIM: Schema = Schema {
    go_name: "v1.ResourceClaim",
    fields: &[("Name", "name", Ty::Str)],
};

static RESOURCE_REQUIREMENTS: Schema = Schema {
    go_name: "v1.ResourceRequirements",
    fields: &[
        ("Limits", "limits", Ty::QuantityMap("v1.ResourceList")),
        ("Requests", "requests", Ty::QuantityMap("v1.ResourceList")),
        ("Claims", "claims", Ty::Slice(&RESOURCE_CLAIM)),
    ],
};

static CONTAINER_RESIZE_POLICY: Schema = Schema {
    go_name: "v1.ContainerResizePolicy",
    fields: &[
        ("ResourceName", "resourceName", Ty::Str),
        ("RestartPolicy", "restartPolicy", Ty::Str),
    ],
};

static VOLUME_DEVICE: Schema = Schema {
    go_name: "v1.VolumeDevice",
    fields: &[("Name", "name", Ty::Str), ("DevicePath", "devicePath", Ty::Str)],
};

/// `core/v1.Container` (v0.28 field order).
pub(crate) static CONTAINER: Schema = Schema {
    go_name: "v1.Container",
    fields: &[
        ("Name", "name", Ty::Str),
        ("Image", "image", Ty::Str),
        ("Command", "command", Ty::StrSlice),
        ("Args", "args", Ty::StrSlice),
        ("WorkingDir", "workingDir", Ty::Str),
        ("Ports", "ports", Ty::Slice(&CONTAINER_PORT)),
        ("EnvFrom", "envFrom", Ty::Slice(&ENV_FROM_SOURCE)),
        ("Env", "env", Ty::Slice(&ENV_VAR)),
        ("Resources", "resources", Ty::Struct(&RESOURCE_REQUIREMENTS)),
        ("ResizePolicy", "resizePolicy", Ty::Slice(&CONTAINER_RESIZE_POLICY)),
        ("RestartPolicy", "restartPolicy", Ty::Ptr("*v1.ContainerRestartPolicy")),
        ("VolumeMounts", "volumeMounts", Ty::Slice(&VOLUME_MOUNT)),
        ("VolumeDevices", "volumeDevices", Ty::Slice(&VOLUME_DEVICE)),
        ("LivenessProbe", "livenessProbe", Ty::Ptr("*v1.Probe")),
        ("ReadinessProbe", "readinessProbe", Ty::Ptr("*v1.Probe")),
        ("StartupProbe", "startupProbe", Ty::Ptr("*v1.Probe")),
        ("Lifecycle", "lifecycle", Ty::Ptr("*v1.Lifecycle")),
        ("TerminationMessagePath", "terminationMessagePath", Ty::Str),
        ("TerminationMessagePolicy", "terminationMessagePolicy", Ty::Str),
        ("ImagePullPolicy", "imagePullPolicy", Ty::Str),
        ("SecurityContext", "securityContext", Ty::Ptr("*v1.SecurityContext")),
        ("Stdin", "stdin", Ty::Bool),
        ("StdinOnce", "stdinOnce", Ty::Bool),
        ("TTY", "tty", Ty::Bool),
    ],
};

/// Go's `strconv.Quote`: a double-quoted Go string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || c == '\u{feff}' => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// apimachinery's `utilerrors.NewAggregate(errs).Error()` for already flattened messages:
/// duplicates dropped, joined with `, `, wrapped in `[…]` when more than one remains.
pub(crate) fn aggregate(msgs: &[String]) -> String {
    let mut seen = BTreeSet::new();
    let mut distinct: Vec<&str> = Vec::new();
    for m in msgs {
        if seen.insert(m.as_str()) {
            distinct.push(m);
        }
    }
    match distinct.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// `%#v` of `value` decoded into the Go struct described by `schema`.
pub(crate) fn sharp_v(value: &Value, schema: &Schema) -> String {
    let mut out = String::new();
    write_struct(&mut out, value.as_object(), schema);
    out
}

fn write_struct(out: &mut String, obj: Option<&Map<String, Value>>, schema: &Schema) {
    out.push_str(schema.go_name);
    out.push('{');
    for (i, (go, json, ty)) in schema.fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(go);
        out.push(':');
        let field = obj.and_then(|o| o.get(*json)).filter(|v| !v.is_null());
        match ty {
            Ty::Inline(inner) => write_struct(out, obj, inner),
            Ty::Struct(inner) => write_struct(out, field.and_then(Value::as_object), inner),
            _ => write_field(out, field, *ty),
        }
    }
    out.push('}');
}

fn write_field(out: &mut String, v: Option<&Value>, ty: Ty) {
    match ty {
        Ty::Str => match v {
            None => out.push_str("\"\""),
            Some(Value::String(s)) => out.push_str(&quote(s)),
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::Bool => match v {
            None => out.push_str("false"),
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::Int => match v {
            None => out.push('0'),
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::Ptr(go) => {
            // Upstream prints the pointer's address here; the pointee is more useful and stable.
            let _ = write!(out, "({go})(");
            match v {
                None => out.push_str("nil"),
                Some(other) => out.push_str(&other.to_string()),
            }
            out.push(')');
        }
        Ty::StrSlice => match v {
            None => out.push_str("[]string(nil)"),
            Some(Value::Array(items)) => {
                out.push_str("[]string{");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    match item {
                        Value::String(s) => out.push_str(&quote(s)),
                        other => out.push_str(&other.to_string()),
                    }
                }
                out.push('}');
            }
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::Slice(inner) => match v {
            None => {
                let _ = write!(out, "[]{}(nil)", inner.go_name);
            }
            Some(Value::Array(items)) => {
                let _ = write!(out, "[]{}{{", inner.go_name);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_struct(out, item.as_object(), inner);
                }
                out.push('}');
            }
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::QuantityMap(go) => match v {
            None => {
                let _ = write!(out, "{go}(nil)");
            }
            Some(Value::Object(m)) => {
                let _ = write!(out, "{go}{{");
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let q = match m.get(*k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    let _ = write!(out, "{}:resource.MustParse({})", quote(k), quote(&q));
                }
                out.push('}');
            }
            Some(other) => out.push_str(&other.to_string()),
        },
        Ty::Struct(inner) | Ty::Inline(inner) => write_struct(out, v.and_then(Value::as_object), inner),
    }
}

/// The value Go would hold after decoding `value` into the struct `schema`, as canonical JSON:
/// zero values for absent scalars, `null` for nil pointers/slices/maps, unknown fields dropped.
/// Two values are `reflect.DeepEqual` after decoding when their normal forms are equal.
pub(crate) fn normalize(value: &Value, schema: &Schema) -> Value {
    let mut out = Map::new();
    normalize_into(&mut out, value.as_object(), schema);
    Value::Object(out)
}

fn normalize_into(out: &mut Map<String, Value>, obj: Option<&Map<String, Value>>, schema: &Schema) {
    for (go, json, ty) in schema.fields {
        let field = obj.and_then(|o| o.get(*json)).filter(|v| !v.is_null());
        let norm = match ty {
            Ty::Inline(inner) => {
                normalize_into(out, obj, inner);
                continue;
            }
            Ty::Str => field.cloned().unwrap_or_else(|| Value::String(String::new())),
            Ty::Bool => field.cloned().unwrap_or(Value::Bool(false)),
            Ty::Int => match field {
                None => Value::from(0),
                Some(v) => normalize_int(v),
            },
            Ty::Ptr(_) => field.map(strip_nulls).unwrap_or(Value::Null),
            Ty::StrSlice | Ty::QuantityMap(_) => field.cloned().unwrap_or(Value::Null),
            Ty::Slice(inner) => match field {
                None => Value::Null,
                Some(Value::Array(items)) => Value::Array(items.iter().map(|i| normalize(i, inner)).collect()),
                Some(other) => other.clone(),
            },
            Ty::Struct(inner) => normalize(field.unwrap_or(&Value::Null), inner),
        };
        out.insert((*go).to_string(), norm);
    }
}

fn normalize_int(v: &Value) -> Value {
    if let Some(i) = v.as_i64() {
        return Value::from(i);
    }
    if let Some(f) = v.as_f64()
        && f.fract() == 0.0
        && f.abs() < 9.0e15
    {
        // Integral and exactly representable, so the conversion is lossless.
        #[allow(clippy::cast_possible_truncation)]
        return Value::from(f as i64);
    }
    v.clone()
}

/// A value printed inside a `field.Error` (apimachinery `ErrorBody`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BadValue {
    /// An integer, printed with `%v`.
    Int(i64),
    /// A string, printed with `%q`.
    Str(String),
    /// Anything else, already rendered the way Go's `%#v` would.
    Raw(String),
}

/// apimachinery `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldError {
    /// `field.Required`.
    Required { path: String, detail: String },
    /// `field.Invalid`.
    Invalid {
        path: String,
        value: BadValue,
        detail: String,
    },
    /// `field.Forbidden`.
    Forbidden { path: String, detail: String },
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, body, detail) = match self {
            Self::Required { path, detail } => (path, "Required value".to_string(), detail),
            Self::Forbidden { path, detail } => (path, "Forbidden".to_string(), detail),
            Self::Invalid { path, value, detail } => {
                let v = match value {
                    BadValue::Int(i) => i.to_string(),
                    BadValue::Str(s) => quote(s),
                    BadValue::Raw(r) => r.clone(),
                };
                (path, format!("Invalid value: {v}"), detail)
            }
        };
        if detail.is_empty() {
            write!(f, "{path}: {body}")
        } else {
            write!(f, "{path}: {body}: {detail}")
        }
    }
}

/// `field.ErrorList.ToAggregate().Error()`.
pub(crate) fn field_errors(errs: &[FieldError]) -> String {
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    aggregate(&msgs)
}

/// `%#v` of a `[]string`.
pub(crate) fn sharp_v_strings(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    #[test]
    fn quote_matches_strconv() {
        assert_eq!(quote("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\x01é\"");
    }

    #[test]
    fn env_var_sharp_v() {
        assert_eq!(
            sharp_v(&json!({"name": "FOO", "value": "bar"}), &ENV_VAR),
            "v1.EnvVar{Name:\"FOO\", Value:\"bar\", ValueFrom:(*v1.EnvVarSource)(nil)}"
        );
    }

    #[test]
    fn aggregate_dedups_and_brackets() {
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }

    #[test]
    fn normalize_treats_zero_values_as_absent() {
        let a = normalize(
            &json!({"name": "x", "readOnly": false, "mountPath": "/a", "junk": 1}),
            &VOLUME_MOUNT,
        );
        let b = normalize(&json!({"name": "x", "mountPath": "/a", "subPath": null}), &VOLUME_MOUNT);
        assert_eq!(a, b);
        let c = normalize(
            &json!({"name": "x", "mountPath": "/a", "readOnly": true}),
            &VOLUME_MOUNT,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn field_error_text() {
        let e = FieldError::Invalid {
            path: "spec.maxTrialCount".into(),
            value: BadValue::Int(0),
            detail: "must be greater than 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "spec.maxTrialCount: Invalid value: 0: must be greater than 0"
        );
    }
}
