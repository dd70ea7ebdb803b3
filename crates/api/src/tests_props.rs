//! Property tests: hostile input to the parsers (paths, queries, selectors, patches, protobuf
//! bodies) yields an error or a value, never a panic.
//!
//! Invariants: test-only.

use proptest::prelude::*;
use serde_json::json;

use crate::patch::{self, PatchType};
use crate::proto;
use crate::route;
use crate::selector::{FieldSelector, LabelQuery};

proptest! {
    #[test]
    fn paths_and_queries_never_panic(p in "[/a-z0-9%.:_-]{0,80}", q in "[=&a-z0-9%+(),!-]{0,80}") {
        let _ = route::parse(&p);
        let _ = route::parse(&format!("/api/v1/namespaces/{p}"));
        let _ = route::Query::parse(Some(&q));
    }

    #[test]
    fn selectors_never_panic(s in "[a-z0-9=!,() ./<>-]{0,60}") {
        if let Ok(sel) = LabelQuery::parse(&s) {
            let _ = sel.matches(Some(&json!({"a": "b"})));
        }
        let _ = FieldSelector::parse(&s, "Pod");
    }

    #[test]
    fn patches_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let doc = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}});
        for kind in [PatchType::Merge, PatchType::Json, PatchType::Strategic] {
            let _ = patch::apply(&doc, kind, &body, true);
        }
    }

    #[test]
    fn protobuf_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = b"k8s\0".to_vec();
        b.extend_from_slice(&body);
        let _ = proto::decode_body(&b);
        let _ = proto::decode_body(&body);
    }

    #[test]
    fn strategic_patches_of_json_never_panic(v in "[\\[\\]{}\":,a-z0-9$/ ]{0,120}") {
        let doc = json!({"spec": {"containers": [{"name": "c", "env": [{"name": "E"}]}]}});
        let _ = patch::apply(&doc, PatchType::Strategic, v.as_bytes(), true);
    }
}
