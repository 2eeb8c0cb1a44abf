//! Source positions of every key and value in a YAML document.
//!
//! `serde_yaml` reports positions only for its own errors, so the checks that
//! run after deserialization look positions up here. The walk also rejects
//! duplicate keys, which `serde_yaml` accepts silently for maps (the last one
//! wins).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn from_marker(marker: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Self {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Option<Position>,
    value: Position,
}

/// A YAML syntax error or a duplicate key found while walking the document.
#[derive(Debug)]
pub(crate) struct LocateError {
    pub key: String,
    pub position: Position,
    pub message: String,
}

/// Positions by key path: `name`, `models[0].path`, `datasets.normal.column`.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    entries: HashMap<String, Entry>,
}

impl Locations {
    /// Parses `text` and records the position of every node. Returns the
    /// first syntax error, or the duplicate keys found.
    pub fn parse(text: &str) -> Result<Self, Vec<LocateError>> {
        let mut collector = Collector::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(error) = parser.load(&mut collector, false) {
            return Err(vec![LocateError {
                key: String::new(),
                position: Position::from_marker(*error.marker()),
                message: error.info().to_owned(),
            }]);
        }

        let mut walk = Walk {
            events: &collector.events,
            index: 0,
            locations: Locations::default(),
            duplicates: Vec::new(),
        };
        walk.skip_to_document();
        if walk.index < walk.events.len() {
            walk.node(String::new(), None);
        }
        if walk.duplicates.is_empty() {
            Ok(walk.locations)
        } else {
            Err(walk.duplicates)
        }
    }

    /// Returns the position of the key at `path`, or of its value for
    /// sequence items and the root.
    pub fn key(&self, path: &str) -> Option<Position> {
        self.entries
            .get(path)
            .map(|entry| entry.key.unwrap_or(entry.value))
    }

    /// Returns the position of the value at `path`.
    pub fn value(&self, path: &str) -> Option<Position> {
        self.entries.get(path).map(|entry| entry.value)
    }

    /// Returns whether the document contains `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Returns the key position of `path` or of its closest ancestor that is
    /// in the document, so that a missing key points at the mapping that
    /// lacks it.
    pub fn nearest_key(&self, path: &str) -> Position {
        let mut current = path;
        loop {
            if let Some(position) = self.key(current) {
                return position;
            }
            match parent(current) {
                Some(up) => current = up,
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// Returns the value position of `path`, falling back like
    /// [`Self::nearest_key`].
    pub fn nearest_value(&self, path: &str) -> Position {
        self.value(path).unwrap_or_else(|| self.nearest_key(path))
    }
}

/// Returns the parent of a key path (`a.b[2]` -> `a.b`, `a.b` -> `a`, `a` ->
/// the empty root path), or `None` for the root.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Joins a key path and a mapping key.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a key path and a sequence index.
pub(crate) fn index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

#[derive(Default)]
struct Collector {
    events: Vec<(Event, Marker)>,
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, event: Event, marker: Marker) {
        self.events.push((event, marker));
    }
}

struct Walk<'a> {
    events: &'a [(Event, Marker)],
    index: usize,
    locations: Locations,
    duplicates: Vec<LocateError>,
}

impl Walk<'_> {
    fn skip_to_document(&mut self) {
        while let Some((event, _)) = self.events.get(self.index) {
            match event {
                Event::StreamStart | Event::DocumentStart | Event::Nothing => self.index += 1,
                _ => break,
            }
        }
        if matches!(
            self.events.get(self.index),
            Some((Event::StreamEnd | Event::DocumentEnd, _))
        ) {
            self.index = self.events.len();
        }
    }

    /// Records the node starting at the current event under `path` and
    /// advances past it.
    fn node(&mut self, path: String, key: Option<Position>) {
        let Some((event, marker)) = self.events.get(self.index) else {
            return;
        };
        let value = Position::from_marker(*marker);
        self.index += 1;
        match event {
            Event::MappingStart(..) => {
                self.locations
                    .entries
                    .insert(path.clone(), Entry { key, value });
                self.mapping(&path);
            }
            Event::SequenceStart(..) => {
                self.locations
                    .entries
                    .insert(path.clone(), Entry { key, value });
                let mut item = 0;
                while let Some((event, _)) = self.events.get(self.index) {
                    if matches!(event, Event::SequenceEnd) {
                        self.index += 1;
                        break;
                    }
                    self.node(index(&path, item), None);
                    item += 1;
                }
            }
            _ => {
                self.locations.entries.insert(path, Entry { key, value });
            }
        }
    }

    fn mapping(&mut self, path: &str) {
        let mut seen: HashMap<String, Position> = HashMap::new();
        while let Some((event, marker)) = self.events.get(self.index) {
            match event {
                Event::MappingEnd => {
                    self.index += 1;
                    return;
                }
                Event::Scalar(name, ..) => {
                    let key_position = Position::from_marker(*marker);
                    let child = join(path, name);
                    if let Some(first) = seen.get(name) {
                        self.duplicates.push(LocateError {
                            key: child.clone(),
                            position: key_position,
                            message: format!(
                                "duplicate key `{name}` (first defined at line {}, column {}); remove one of them",
                                first.line, first.column
                            ),
                        });
                    } else {
                        seen.insert(name.clone(), key_position);
                    }
                    self.index += 1;
                    self.node(child, Some(key_position));
                }
                _ => {
                    // A complex key (a mapping or sequence used as a key):
                    // serde rejects it later, so skip the key and its value.
                    self.node(format!("{path}.<complex key>"), None);
                    self.node(format!("{path}.<complex value>"), None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_keys() {
        let text =
            "name: x\nmodels:\n  - path: a\n    name: b\ndatasets:\n  normal: {path: n.csv}\n";
        let locations = Locations::parse(text).unwrap();
        assert_eq!(
            locations.key("models[0].name"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(
            locations.value("models[0].name"),
            Some(Position {
                line: 4,
                column: 11
            })
        );
        assert_eq!(
            locations.key("datasets.normal.path"),
            Some(Position {
                line: 6,
                column: 12
            })
        );
        assert_eq!(
            locations.nearest_key("datasets.normal.column"),
            Position { line: 6, column: 3 }
        );
    }

    #[test]
    fn duplicate_keys_rejected() {
        let text = "datasets:\n  normal: {path: a}\n  normal: {path: b}\n";
        let errors = Locations::parse(text).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "datasets.normal");
        assert_eq!(errors[0].position, Position { line: 3, column: 3 });
        assert!(
            errors[0].message.contains("line 2"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
