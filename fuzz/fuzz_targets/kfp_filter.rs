//! Arbitrary text as a KFP list request's `filter=` (and, by the first byte, its `sort_by` and
//! `page_size`) through kfsec-kfp's list options (`list::check_filter`, `list::Paginator`): it
//! never panics; a filter either parses or is an InvalidArgument, and listing agrees with it;
//! walking a listing page by page through its signed `next_page_token`s yields exactly the
//! one-page listing (same items, same order, no repeats, the same total on every page); and a
//! token is refused by another listing.

#![no_main]

use kfsec_kfp::KfpError;
use kfsec_kfp::list::{FieldValue, ListRequest, Listable, Paginator, check_filter};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone)]
struct Item {
    id: String,
    name: String,
    created: i64,
    archived: bool,
}

const FIELDS: &[&str] = &["id", "name", "display_name", "created_at", "storage_state"];

impl Listable for Item {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" => FieldValue::Str(self.id.clone()),
            "name" | "display_name" => FieldValue::Str(self.name.clone()),
            "created_at" => FieldValue::Int(self.created),
            "storage_state" => FieldValue::Str(if self.archived { "ARCHIVED" } else { "AVAILABLE" }.into()),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        FIELDS.contains(&key)
    }
}

/// Twelve items with repeated names and times, so sorting leans on the id tie-breaker.
fn items() -> Vec<Item> {
    (0..12)
        .map(|i| Item {
            id: format!("id-{:02}", (i * 7) % 12),
            name: ["a", "b", "run-1", "ARCHIVED", ""][i % 5].to_owned(),
            created: [0, 1_700_000_000, -5, 1_700_000_000][i % 4],
            archived: i % 3 == 0,
        })
        .collect()
}

const SORTS: &[&str] = &[
    "",
    "name",
    "name desc",
    "created_at desc",
    "id asc",
    "storage_state",
    "bogus",
    "name up",
];

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let Ok(filter) = std::str::from_utf8(rest) else {
        return;
    };
    let checked = check_filter(filter);
    if let Err(e) = &checked {
        assert!(matches!(e, KfpError::InvalidInput(_)), "{e:?}");
    }
    let pages = Paginator::new(&[7u8; 32]);
    let sort_by = SORTS[usize::from(b) % SORTS.len()].to_owned();
    let listing = "runs/ns1";
    let all_req = ListRequest {
        page_size: 200,
        page_token: String::new(),
        sort_by: sort_by.clone(),
        filter: filter.to_owned(),
    };
    let all = match pages.page(items(), &all_req, listing) {
        Ok(p) => p,
        Err(e) => {
            assert!(matches!(e, KfpError::InvalidInput(_)), "{e:?}");
            return;
        }
    };
    assert!(checked.is_ok(), "listed with a filter check_filter refused");
    assert!(all.next.is_empty());
    assert_eq!(all.items.len(), all.total);
    let want: Vec<String> = all.items.iter().map(|i| i.id.clone()).collect();
    let size = i64::from(b % 5) + 1;
    let mut got = Vec::new();
    let mut token = String::new();
    for _ in 0..=12 {
        let req = ListRequest {
            page_size: size,
            page_token: token.clone(),
            sort_by: sort_by.clone(),
            filter: filter.to_owned(),
        };
        let page = pages
            .page(items(), &req, listing)
            .expect("a page of a listing that listed");
        assert_eq!(page.total, all.total);
        assert!(page.items.len() <= usize::try_from(size).unwrap_or(0));
        got.extend(page.items.iter().map(|i| i.id.clone()));
        if page.next.is_empty() {
            break;
        }
        let foreign = ListRequest {
            page_token: page.next.clone(),
            ..ListRequest::default()
        };
        assert!(matches!(
            pages.page(items(), &foreign, "runs/ns2"),
            Err(KfpError::InvalidInput(_))
        ));
        token = page.next;
    }
    assert_eq!(got, want, "paged listing differs from the one-page listing");
});
