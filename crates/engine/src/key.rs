//! Cache keys: what a node's output depends on, and why an output is stale.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hash::{canonical_json, FileDigest};

/// Everything a node's cache key is computed from. It is stored in the
/// manifest so that a later plan can report which part changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    pub stage: String,
    /// The stage's [`code_version`](crate::Stage::code_version).
    pub code_version: u32,
    /// The stage's parameters for this node.
    pub params: Value,
    /// Keys of the upstream nodes, by node id.
    pub upstream: BTreeMap<String, String>,
    /// Digests of the files the node reads, by role.
    pub files: BTreeMap<String, FileDigest>,
}

impl KeyParts {
    /// Returns the key: BLAKE3 of the canonical JSON of these parts, in hex.
    #[must_use]
    pub fn key(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        blake3::hash(canonical_json(&value).as_bytes())
            .to_hex()
            .to_string()
    }

    /// Lists what differs between `old` (from a manifest) and `self`.
    #[must_use]
    pub fn changes_since(&self, old: &KeyParts) -> Vec<StaleReason> {
        let mut reasons = Vec::new();
        if self.stage != old.stage {
            reasons.push(StaleReason::Stage {
                old: old.stage.clone(),
                new: self.stage.clone(),
            });
        }
        if self.code_version != old.code_version {
            reasons.push(StaleReason::CodeVersion {
                old: old.code_version,
                new: self.code_version,
            });
        }
        diff_values("", Some(&old.params), Some(&self.params), &mut reasons);

        let nodes: BTreeSet<&String> = old.upstream.keys().chain(self.upstream.keys()).collect();
        for node in nodes {
            match (old.upstream.get(node), self.upstream.get(node)) {
                (Some(before), Some(now)) if before != now => {
                    reasons.push(StaleReason::Upstream { node: node.clone() });
                }
                (None, Some(_)) => reasons.push(StaleReason::UpstreamAdded { node: node.clone() }),
                (Some(_), None) => {
                    reasons.push(StaleReason::UpstreamRemoved { node: node.clone() });
                }
                _ => {}
            }
        }

        let roles: BTreeSet<&String> = old.files.keys().chain(self.files.keys()).collect();
        for role in roles {
            match (old.files.get(role), self.files.get(role)) {
                (Some(before), Some(now)) if before != now => {
                    reasons.push(StaleReason::FileChanged {
                        role: role.clone(),
                        size: (before.size != now.size).then_some((before.size, now.size)),
                    });
                }
                (None, Some(_)) => reasons.push(StaleReason::FileAdded { role: role.clone() }),
                (Some(_), None) => reasons.push(StaleReason::FileRemoved { role: role.clone() }),
                _ => {}
            }
        }
        reasons
    }
}

/// One reason an existing output no longer matches its node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StaleReason {
    Stage {
        old: String,
        new: String,
    },
    CodeVersion {
        old: u32,
        new: u32,
    },
    /// A parameter changed, was added (`old` is `None`) or removed.
    Parameter {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    /// An upstream node's key changed, so its output will be recomputed.
    Upstream {
        node: String,
    },
    UpstreamAdded {
        node: String,
    },
    UpstreamRemoved {
        node: String,
    },
    /// An upstream node was recomputed (with the same key) after this output
    /// was written, and its files differ from the ones this output read.
    UpstreamOutput {
        node: String,
    },
    FileChanged {
        role: String,
        /// Old and new size, when the size changed.
        size: Option<(u64, u64)>,
    },
    FileAdded {
        role: String,
    },
    FileRemoved {
        role: String,
    },
    /// The manifest was written by an engine with another manifest format.
    ManifestFormat {
        found: u32,
        expected: u32,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stage { old, new } => write!(f, "stage changed from `{old}` to `{new}`"),
            Self::CodeVersion { old, new } => {
                write!(f, "stage code version changed from {old} to {new}")
            }
            Self::Parameter { key, old, new } => match (old, new) {
                (Some(old), Some(new)) => write!(
                    f,
                    "parameter `{key}` changed from {} to {}",
                    canonical_json(old),
                    canonical_json(new)
                ),
                (None, Some(new)) => {
                    write!(f, "parameter `{key}` added ({})", canonical_json(new))
                }
                (Some(old), None) => {
                    write!(f, "parameter `{key}` removed (was {})", canonical_json(old))
                }
                (None, None) => write!(f, "parameter `{key}` changed"),
            },
            Self::Upstream { node } => write!(f, "input `{node}` changed"),
            Self::UpstreamAdded { node } => write!(f, "new input `{node}`"),
            Self::UpstreamRemoved { node } => write!(f, "input `{node}` removed"),
            Self::UpstreamOutput { node } => {
                write!(
                    f,
                    "input `{node}` was recomputed since this output was written"
                )
            }
            Self::FileChanged { role, size } => match size {
                Some((old, new)) => {
                    write!(f, "file `{role}` changed (size {old} -> {new} bytes)")
                }
                None => write!(f, "file `{role}` changed"),
            },
            Self::FileAdded { role } => write!(f, "file `{role}` added"),
            Self::FileRemoved { role } => write!(f, "file `{role}` removed"),
            Self::ManifestFormat { found, expected } => write!(
                f,
                "manifest format {found} is not the current format {expected}"
            ),
        }
    }
}

/// Appends a [`StaleReason::Parameter`] for each leaf that differs between
/// two JSON values. Arrays are compared whole.
fn diff_values(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<StaleReason>) {
    match (old, new) {
        (Some(Value::Object(old_map)), Some(Value::Object(new_map))) => {
            let keys: BTreeSet<&String> = old_map.keys().chain(new_map.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_values(&child, old_map.get(key), new_map.get(key), out);
            }
        }
        (old, new) if old != new => out.push(StaleReason::Parameter {
            key: if path.is_empty() {
                "(all)".to_owned()
            } else {
                path.to_owned()
            },
            old: old.cloned(),
            new: new.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(params: Value) -> KeyParts {
        KeyParts {
            stage: "probe".into(),
            code_version: 1,
            params,
            upstream: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_key_order() {
        let a = parts(json!({"a": 1, "b": {"c": 2, "d": 3}}));
        let b = parts(json!({"b": {"d": 3, "c": 2}, "a": 1}));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), parts(json!({"a": 2})).key());
    }

    #[test]
    fn nested_parameter_change_named() {
        let old = parts(json!({"classifiers": {"svm": {"c": 1.0}}, "seed": 42}));
        let new = parts(json!({"classifiers": {"svm": {"c": 2.0}}, "seed": 42}));
        let reasons = new.changes_since(&old);
        assert_eq!(reasons.len(), 1);
        assert_eq!(
            reasons[0].to_string(),
            "parameter `classifiers.svm.c` changed from 1.0 to 2.0"
        );
    }
}
