//! Lists: selector filtering over store pages, `limit` and opaque `continue` tokens.
//!
//! Invariants: a continue token only resumes within the prefix it was issued for (a token from
//! another namespace or type is a 400); all pages of one list report the first page's revision;
//! a continue token is only issued when more records may follow.

use base64::Engine as _;
use kfsec_store::Revision;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::objects::decode;
use crate::registry::Resource;
use crate::selector::{FieldSelector, LabelQuery};
use crate::status::ApiError;

/// List parameters.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListQuery {
    pub labels: LabelQuery,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
}

/// One list result.
#[derive(Debug, Clone)]
pub(crate) struct ListOut {
    pub items: Vec<Value>,
    pub revision: Revision,
    pub continue_token: Option<String>,
}

impl ApiServer {
    /// Lists objects of `res` (in `ns`, or everywhere for `None`).
    pub(crate) async fn list_in(&self, res: &Resource, ns: Option<&str>, q: &ListQuery) -> Result<ListOut, ApiError> {
        let prefix = res.list_prefix(ns);
        let (mut start, pinned_rev) = match q.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => {
                let (key, rev) = decode_continue(t, &prefix)?;
                (Some(key), Some(rev))
            }
            None => (None, None),
        };
        let filtering = !q.labels.is_empty() || q.fields != FieldSelector::default();
        let batch = if q.limit == 0 {
            0
        } else if filtering {
            q.limit.max(256)
        } else {
            q.limit
        };
        let mut items = Vec::new();
        let mut revision = pinned_rev;
        let mut continue_token = None;
        'pages: loop {
            let page = self.store.list(&prefix, batch, start.as_deref()).await?;
            let page_rev = *revision.get_or_insert(page.revision);
            let n = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                let obj = decode(res, kv)?;
                if !q.labels.matches_object(&obj) || !q.fields.matches(&obj) {
                    continue;
                }
                items.push(obj);
                if q.limit > 0 && items.len() >= q.limit {
                    let more = i + 1 < n || page.continue_key.is_some();
                    if more {
                        continue_token = Some(encode_continue(&kv.key, page_rev, &prefix));
                    }
                    break 'pages;
                }
            }
            match page.continue_key {
                Some(k) if batch > 0 => start = Some(k),
                _ => break,
            }
        }
        Ok(ListOut {
            items,
            revision: revision.unwrap_or_default(),
            continue_token,
        })
    }
}

fn encode_continue(key: &str, rev: Revision, prefix: &str) -> String {
    let raw = json!({"v": 1, "k": key, "rv": rev, "p": prefix}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_bytes())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(String, Revision), ApiError> {
    let bad = || {
        ApiError::BadRequest(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let key = v.get("k").and_then(Value::as_str).ok_or_else(bad)?;
    let rev = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    if v.get("p").and_then(Value::as_str) != Some(prefix) || !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok((key.to_owned(), rev))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn continue_tokens_are_bound_to_their_prefix() {
        let t = encode_continue("/k8s/core/pods/a/x", 7, "/k8s/core/pods/a/");
        assert_eq!(
            decode_continue(&t, "/k8s/core/pods/a/").unwrap(),
            ("/k8s/core/pods/a/x".into(), 7)
        );
        assert_eq!(decode_continue(&t, "/k8s/core/pods/b/").unwrap_err().code(), 400);
        assert_eq!(decode_continue("!!", "/k8s/").unwrap_err().code(), 400);
    }
}
