//! Arbitrary bytes as an S3 store's XML answers, through kfsec-s3's `listing` readers: the
//! listing filter (`filter`), the entries a namespace purge deletes (`entries`), a DeleteObjects
//! answer's errors (`delete_errors`) and an error's code (`error_code`). None panics; a listing
//! filtered with everything visible lists the same entries as the answer it came from.

#![no_main]

use kfsec_s3::listing::{delete_errors, entries, error_code, filter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = delete_errors(data);
    let _ = error_code(data);
    let listed = entries(data);
    // (a sealed marker is text without markup, as `MarkerSeal` makes them)
    let seal = |m: &str| m.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let all = filter(data, |_| true, |_| true, seal);
    let none = filter(data, |_| false, |_| false, |_| "sealed".to_owned());
    if let (Ok((listed, _)), Ok(all)) = (&listed, &all) {
        let (again, _) = entries(all).expect("a filtered listing is a listing");
        assert_eq!(&again, listed);
    }
    if let (Ok(_), Ok(none)) = (&listed, &none) {
        let (again, _) = entries(none).expect("a filtered listing is a listing");
        assert!(again.is_empty(), "{again:?}");
    }
});
