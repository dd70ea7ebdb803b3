//! Pipeline packages: the multipart `uploadfile` part, KFP's file formats (YAML / JSON as is, a
//! zip or a tar.gz holding `pipeline.yaml` or one YAML file), and the checks that the content is
//! a pipeline (an Argo Workflow or a KFP v2 pipeline spec, possibly with a platform spec).
//!
//! Invariants: every size is bounded — the request body by the caller, and each decompressed
//! file by the same limit (a zip or gzip bomb stops at the limit with InvalidArgument); nothing
//! here panics or allocates beyond the limit on any input; YAML parsing runs with
//! `serde-saphyr`'s default budget (no alias explosion).

use std::io::Read;

use serde_json::{Map, Value};

use crate::error::{KfpError, KfpResult};

pub use crate::multipart::Upload;

/// Extracts the part named `field` from a `multipart/form-data` body (linear time, see
/// [`crate::multipart`]).
pub fn multipart_file(content_type: &str, body: &[u8], field: &str) -> KfpResult<Upload> {
    crate::multipart::file(content_type, body, field)
        .map_err(|e| KfpError::InvalidInput(format!("Failed to read pipeline from file: {e}")))
}

fn is_yaml_name(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

fn read_limited(r: impl Read, max: usize) -> KfpResult<Vec<u8>> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut out)
        .map_err(|_| KfpError::InvalidInput("Error decompress the pipeline file: the archive is corrupt".into()))?;
    if out.len() > max {
        return Err(KfpError::TooLarge(format!(
            "File size too large after decompression. Maximum supported size: {max}"
        )));
    }
    Ok(out)
}

fn from_tarball(bytes: &[u8], max: usize) -> KfpResult<Vec<u8>> {
    let bad =
        || KfpError::InvalidInput("Error extracting pipeline from the tarball file. Not a valid tarball file".into());
    let gz = flate2::read::GzDecoder::new(bytes);
    // Bound the whole decompressed stream, not only the chosen entry.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_mul(2);
    let mut archive = tar::Archive::new(gz.take(limit));
    let mut first: Option<(String, Vec<u8>)> = None;
    let entries = archive.entries().map_err(|_| bad())?;
    for entry in entries {
        let mut entry = entry.map_err(|_| bad())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| bad())?;
        let base = name.rsplit('/').next().unwrap_or_default().to_owned();
        if base == "pipeline.yaml" {
            return read_limited(&mut entry, max);
        }
        if first.is_none() {
            let data = read_limited(&mut entry, max)?;
            first = Some((name, data));
        }
    }
    match first {
        Some((name, data)) if is_yaml_name(&name) => Ok(data),
        Some((name, _)) => Err(KfpError::InvalidInput(format!(
            "Error extracting pipeline from the tarball file. Expecting a pipeline.yaml file inside the tarball. Got: {name}"
        ))),
        None => Err(bad()),
    }
}

fn from_zip(bytes: &[u8], max: usize) -> KfpResult<Vec<u8>> {
    let bad = |m: &str| KfpError::InvalidInput(format!("Error extracting pipeline from the zip file. {m}"));
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|_| bad("Not a valid zip file"))?;
    if z.is_empty() {
        return Err(bad("Empty zip file"));
    }
    let mut chosen = 0usize;
    for i in 0..z.len() {
        let f = z.by_index_raw(i).map_err(|_| bad("Not a valid zip file"))?;
        if f.name().ok().as_deref() == Some("pipeline.yaml") {
            chosen = i;
            break;
        }
    }
    let f = z.by_index(chosen).map_err(|_| bad("Failed to read the content"))?;
    let name = f.name().map(|n| n.into_owned()).unwrap_or_default();
    if !is_yaml_name(&name) {
        return Err(bad(&format!(
            "Expecting a pipeline.yaml file inside the zip. Got: {name}"
        )));
    }
    read_limited(f, max)
}

/// KFP's `ReadPipelineFile`: the pipeline text inside an uploaded file.
pub fn read_pipeline_file(filename: &str, bytes: &[u8], max: usize) -> KfpResult<Vec<u8>> {
    if bytes.len() > max {
        return Err(KfpError::TooLarge(format!(
            "File size too large ({} bytes). Maximum supported size: {max}",
            bytes.len()
        )));
    }
    if is_yaml_name(filename) || filename.ends_with(".json") {
        return Ok(bytes.to_vec());
    }
    if bytes.starts_with(b"PK") {
        return from_zip(bytes, max);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return from_tarball(bytes, max);
    }
    Err(KfpError::InvalidInput(
        "Unexpected pipeline file format. Support .zip, .tar.gz, .json or YAML".into(),
    ))
}

/// A parsed pipeline: the JSON form KFP returns as `pipeline_spec`, and whether it is a KFP v2
/// pipeline spec (else an Argo Workflow).
#[derive(Debug, Clone)]
pub struct Spec {
    /// One document as is; a pipeline spec plus a platform spec as
    /// `{"pipeline_spec": …, "platform_spec": …}`.
    pub json: Value,
    /// A KFP v2 (IR) pipeline spec.
    pub v2: bool,
}

impl Spec {
    /// The pipeline spec document (without the platform spec wrapper).
    pub fn pipeline_doc(&self) -> &Value {
        if self.v2
            && let Some(p) = self.json.get("pipeline_spec")
        {
            return p;
        }
        &self.json
    }

    /// The name the spec gives itself (`pipelineInfo.name` or the workflow's generateName).
    pub fn name(&self) -> String {
        let d = self.pipeline_doc();
        let s = if self.v2 {
            d.pointer("/pipelineInfo/name")
        } else {
            d.pointer("/metadata/name")
                .or_else(|| d.pointer("/metadata/generateName"))
        };
        s.and_then(Value::as_str)
            .unwrap_or_default()
            .trim_end_matches('-')
            .to_owned()
    }

    /// v1 parameters `[{name, value}]`: an Argo workflow's `spec.arguments.parameters`, or the
    /// defaults of a v2 spec's root inputs.
    pub fn parameters(&self) -> Vec<(String, String)> {
        let d = self.pipeline_doc();
        if !self.v2 {
            return d
                .pointer("/spec/arguments/parameters")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| {
                            let name = p.get("name")?.as_str()?.to_owned();
                            let value = match p.get("value") {
                                Some(Value::String(s)) => s.clone(),
                                Some(Value::Null) | None => String::new(),
                                Some(other) => other.to_string(),
                            };
                            Some((name, value))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        Vec::new()
    }
}

fn looks_like_v2(d: &Value) -> bool {
    d.get("pipelineInfo").is_some() && d.get("root").is_some()
}

fn looks_like_workflow(d: &Value) -> bool {
    d.get("kind").and_then(Value::as_str) == Some("Workflow")
        && d.get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("argoproj.io/"))
}

/// Parses pipeline text (YAML or JSON, one or two documents) and checks it is a pipeline.
pub fn parse_spec(text: &[u8]) -> KfpResult<Spec> {
    let text = std::str::from_utf8(text)
        .map_err(|_| KfpError::InvalidInput("Failed to parse the pipeline spec: it is not UTF-8 text".into()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| KfpError::InvalidInput(format!("Failed to parse the pipeline spec as YAML: {e}")))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    spec_from_docs(docs)
}

/// Checks a pipeline given as JSON (a run's inline `pipeline_spec`).
pub fn spec_from_json(v: Value) -> KfpResult<Spec> {
    if v.get("pipeline_spec").is_some() {
        let mut docs = vec![v.get("pipeline_spec").cloned().unwrap_or(Value::Null)];
        if let Some(p) = v.get("platform_spec") {
            docs.push(p.clone());
        }
        return spec_from_docs(docs);
    }
    spec_from_docs(vec![v])
}

fn spec_from_docs(docs: Vec<Value>) -> KfpResult<Spec> {
    let invalid = || {
        KfpError::InvalidInput(
            "Failed to parse the pipeline spec: expected a KFP pipeline spec (pipelineInfo, root) or an Argo Workflow"
                .into(),
        )
    };
    let mut it = docs.into_iter();
    let first = it.next().ok_or_else(invalid)?;
    let second = it.next();
    if it.next().is_some() || !first.is_object() {
        return Err(invalid());
    }
    if looks_like_v2(&first) {
        let json = match second {
            None => first,
            Some(p) if p.is_object() => {
                let mut m = Map::new();
                m.insert("pipeline_spec".into(), first);
                m.insert("platform_spec".into(), p);
                Value::Object(m)
            }
            Some(_) => return Err(invalid()),
        };
        return Ok(Spec { json, v2: true });
    }
    if looks_like_workflow(&first) && second.is_none() {
        return Ok(Spec { json: first, v2: false });
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) const IR: &str =
        "pipelineInfo:\n  name: hello\nroot:\n  dag:\n    tasks: {}\nschemaVersion: 2.1.0\nsdkVersion: kfp-2.14.6\n";

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            for (n, b) in files {
                w.start_file(*n, zip::write::SimpleFileOptions::default()).unwrap();
                w.write_all(b).unwrap();
            }
            w.finish().unwrap();
        }
        buf.into_inner()
    }

    fn tgz_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        for (n, b) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(b.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, n, *b).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn formats() {
        let max = 1 << 20;
        assert_eq!(read_pipeline_file("p.yaml", IR.as_bytes(), max).unwrap(), IR.as_bytes());
        let z = zip_of(&[("other.txt", b"x"), ("pipeline.yaml", IR.as_bytes())]);
        assert_eq!(read_pipeline_file("p.zip", &z, max).unwrap(), IR.as_bytes());
        let t = tgz_of(&[("a/readme.md", b"x"), ("pipeline.yaml", IR.as_bytes())]);
        assert_eq!(read_pipeline_file("p.tar.gz", &t, max).unwrap(), IR.as_bytes());
        let t = tgz_of(&[("only.yaml", IR.as_bytes())]);
        assert_eq!(read_pipeline_file("p.tgz", &t, max).unwrap(), IR.as_bytes());
        let t = tgz_of(&[("only.txt", IR.as_bytes())]);
        assert_eq!(read_pipeline_file("p.tgz", &t, max).unwrap_err().code(), 3);
        let z = zip_of(&[("x.txt", b"x")]);
        assert_eq!(read_pipeline_file("p.zip", &z, max).unwrap_err().code(), 3);
        for junk in [&b"PK\x03\x04garbage"[..], b"\x1f\x8bgarbage", b"\x00\x01", b""] {
            assert_eq!(read_pipeline_file("p.bin", junk, max).unwrap_err().code(), 3);
        }
        assert_eq!(
            read_pipeline_file("p.yaml", &vec![b'a'; 2000], 1000)
                .unwrap_err()
                .http_status(),
            413
        );
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let big = vec![b'a'; 5 << 20];
        let z = zip_of(&[("pipeline.yaml", &big)]);
        assert!(z.len() < 100_000);
        assert_eq!(read_pipeline_file("p.zip", &z, 1 << 20).unwrap_err().http_status(), 413);
        let t = tgz_of(&[("pipeline.yaml", &big)]);
        assert_eq!(read_pipeline_file("p.tgz", &t, 1 << 20).unwrap_err().http_status(), 413);
    }

    #[test]
    fn specs() {
        let s = parse_spec(IR.as_bytes()).unwrap();
        assert!(s.v2);
        assert_eq!(s.name(), "hello");
        let two = format!("{IR}---\nplatforms:\n  kubernetes: {{}}\n");
        let s = parse_spec(two.as_bytes()).unwrap();
        assert!(s.json.get("platform_spec").is_some());
        assert_eq!(s.name(), "hello");
        let wf = "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata:\n  generateName: hi-\nspec:\n  arguments:\n    parameters:\n    - name: a\n      value: '1'\n";
        let s = parse_spec(wf.as_bytes()).unwrap();
        assert!(!s.v2);
        assert_eq!(s.name(), "hi");
        assert_eq!(s.parameters(), vec![("a".to_owned(), "1".to_owned())]);
        for bad in [&b"a: [1"[..], b"just text", b"- 1\n- 2", b"kind: Pod", b"\xff\xfe", b""] {
            assert_eq!(parse_spec(bad).unwrap_err().code(), 3, "{bad:?}");
        }
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
        assert!(parse_spec(bomb.as_bytes()).is_err());
    }

    #[test]
    fn multipart() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--XyZ\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\nworld\r\n--XyZ--\r\n";
        let u = multipart_file("multipart/form-data; boundary=XyZ", body, "uploadfile").unwrap();
        assert_eq!(u.filename, "p.yaml");
        assert_eq!(u.bytes, b"hello\r\nworld");
        for (ct, b) in [
            ("application/json", &body[..]),
            ("multipart/form-data", &body[..]),
            ("multipart/form-data; boundary=nope", &body[..]),
            (
                "multipart/form-data; boundary=XyZ",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"uploadfile\"\r\n\r\nunterminated",
            ),
            ("multipart/form-data; boundary=XyZ", b"--XyZ"),
            ("multipart/form-data; boundary=XyZ", b"--XyZ--\r\n"),
            ("multipart/form-data; boundary=XyZ", b""),
        ] {
            assert_eq!(multipart_file(ct, b, "uploadfile").unwrap_err().code(), 3, "{ct}");
        }
    }
}
