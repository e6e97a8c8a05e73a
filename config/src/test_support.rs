//! Test support shared with the processor's configuration tests: values an operator might
//! write that YAML treats specially.

use proptest::prelude::*;

/// Text an operator might put in a name or a path: YAML's special characters, quotes,
/// unicode and line breaks.
pub fn hostile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("*".to_string()),
            Just("#".to_string()),
            Just(" #".to_string()),
            Just("@".to_string()),
            Just(": ".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("\n".to_string()),
            Just("\\".to_string()),
            Just("- ".to_string()),
            Just("{}".to_string()),
            Just("~".to_string()),
            Just("null".to_string()),
            Just("yes".to_string()),
            Just("0x1F".to_string()),
            Just("é服🙂".to_string()),
            "[a-z0-9]{1,4}",
        ],
        1..8,
    )
    .prop_map(|parts| parts.concat())
    .prop_filter("a blank name is refused", |s| !s.trim().is_empty())
}
