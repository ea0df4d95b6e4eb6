//! JSON of any shape, for the property tests of what the plugin and the
//! agent read (this crate's `fuzz_inputs.rs`, and the agent's, which
//! includes this file).

use proptest::prelude::*;

/// JSON of any shape, a few levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        "\\PC{0,20}".prop_map(Into::into),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Into::into),
            prop::collection::btree_map("[a-zA-Z_]{1,10}", inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
