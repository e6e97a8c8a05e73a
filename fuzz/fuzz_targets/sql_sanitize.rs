//! Arbitrary text through the SQL helpers: never a panic, bounded output, sanitizing is
//! idempotent, and a literal's content never survives whatever text follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_processor::protocols::sql::{self, Dialect, MAX_SANITIZED_LEN, TRUNCATED};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for dialect in [Dialect::Postgres, Dialect::MySql] {
        let out = sql::sanitize_with(&text, dialect);
        assert!(out.len() <= MAX_SANITIZED_LEN + TRUNCATED.len());
        if !out.ends_with(TRUNCATED) {
            assert_eq!(sql::sanitize_with(&out, dialect), out, "{text:?}");
        }
        // A literal keeps its content hidden whatever follows it.
        if !text.contains("zqsecret") {
            let probe = format!("SELECT 'zqsecret' {text}");
            assert!(
                !sql::sanitize_with(&probe, dialect).contains("zqsecret"),
                "{text:?}"
            );
        }
        let _ = sql::operation_with(&text, dialect);
        if let Some(table) = sql::collection_with(&text, dialect) {
            assert!(table.len() <= sql::MAX_COLLECTION_LEN);
        }
    }
});
