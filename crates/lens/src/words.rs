//! Word lists that sort tokens into groups (`negative`, `positive`,
//! `neutral`), as Zhou et al. (2024) colour the logit lens: refusal-like
//! "emotion" tokens against compliance-like ones.
//!
//! The file is YAML. `groups` lists the groups in matching order, each with
//! a `name`, an optional `description` and two lists:
//!
//! ```yaml
//! groups:
//!   - name: negative
//!     description: Refusal tokens.
//!     words: [sorry, cannot, unfortunately]
//!     prefixes: [apolog, illeg]
//!   - name: positive
//!     words: [sure, certainly]
//!     prefixes: [step]
//! ```
//!
//! A token matches an entry after both are normalized (see [`normalize`]):
//! a `words` entry when the texts are equal, a `prefixes` entry when the
//! token starts with it. Groups are tried in list order and the first match
//! wins. Each entry may appear once in the file, and no prefix may match an
//! entry of a later group, so the order never hides an entry.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A word group. Tokens in no group are reported as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Negative,
    Positive,
    Neutral,
}

impl Group {
    pub const ALL: [Self; 3] = [Self::Negative, Self::Positive, Self::Neutral];

    /// Returns the name written in word-list files and output tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Negative => "negative",
            Self::Positive => "positive",
            Self::Neutral => "neutral",
        }
    }

    /// Parses a group name (`negative`, `positive` or `neutral`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|group| group.name() == name)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name output tables use for tokens that match no group.
pub const OTHER: &str = "other";

/// Returns the table name of an optional group: its name, or [`OTHER`].
#[must_use]
pub fn group_name(group: Option<Group>) -> &'static str {
    group.map_or(OTHER, Group::name)
}

/// A word-list file that cannot be used, with the file, key and line.
#[derive(Debug, thiserror::Error)]
pub enum WordListError {
    #[error("cannot read word lists {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}:{line}:{column}: invalid YAML in word lists: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// Key path such as `groups[0].words[3]`; empty for the document.
        key: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The entries of one group, normalized.
#[derive(Debug, Clone)]
struct GroupEntries {
    group: Group,
    words: Vec<String>,
    prefixes: Vec<String>,
}

/// Word lists loaded from a YAML file, in file order.
#[derive(Debug, Clone)]
pub struct WordLists {
    path: PathBuf,
    groups: Vec<GroupEntries>,
    /// Whole-word entries to the index of their group in `groups`.
    words: HashMap<String, usize>,
}

impl WordLists {
    /// Reads and checks a word-list file.
    pub fn load(path: &Path) -> Result<Self, WordListError> {
        let text = std::fs::read_to_string(path).map_err(|source| WordListError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses word-list text that was read from `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, WordListError> {
        let mut collector = Collector::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(error) = parser.load(&mut collector, false) {
            let marker = error.marker();
            return Err(WordListError::Syntax {
                path: path.to_owned(),
                line: marker.line().max(1),
                column: marker.col() + 1,
                message: error.info().to_owned(),
            });
        }
        let mut events = collector.events.into_iter().peekable();
        let root = loop {
            match events.next() {
                Some((Event::StreamStart | Event::DocumentStart | Event::Nothing, _)) => {}
                Some((event, marker)) if !matches!(event, Event::StreamEnd | Event::DocumentEnd) => {
                    break Node::build(event, marker, &mut events);
                }
                _ => {
                    return Err(WordListError::Invalid {
                        path: path.to_owned(),
                        key: String::new(),
                        line: 1,
                        column: 1,
                        message: "the file is empty; define `groups`, a list of negative, positive and neutral word lists".to_owned(),
                    })
                }
            }
        };
        Checker {
            path,
            defined: Vec::new(),
        }
        .document(&root)
    }

    /// Returns the file the lists were read from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the groups in file order (the order they are tried in).
    pub fn groups(&self) -> impl Iterator<Item = Group> + '_ {
        self.groups.iter().map(|entries| entries.group)
    }

    /// Returns the group of a token: its vocabulary string (`Ġsure`,
    /// `▁Sorry`) or its decoded text (` sure`). `None` when no group matches
    /// or nothing is left after [`normalize`].
    #[must_use]
    pub fn group_of(&self, token_text: &str) -> Option<Group> {
        let token = normalize(token_text);
        if token.is_empty() {
            return None;
        }
        let by_word = self.words.get(&token).copied();
        let by_prefix = self.groups.iter().position(|entries| {
            entries
                .prefixes
                .iter()
                .any(|prefix| token.starts_with(prefix.as_str()))
        });
        // The earlier group in the file wins when both kinds match.
        let index = match (by_word, by_prefix) {
            (Some(word), Some(prefix)) => word.min(prefix),
            (word, prefix) => word.or(prefix)?,
        };
        Some(self.groups[index].group)
    }
}

/// Normalizes a token or a list entry for matching: drops the tokenizer's
/// word-start and byte markers (`Ġ`, `▁`, `Ċ`, `ĉ`), whitespace and
/// punctuation at both ends, maps typographic apostrophes to `'` and
/// lowercases the rest. Punctuation inside a word (`can't`) is kept.
#[must_use]
pub fn normalize(text: &str) -> String {
    text.trim_matches(is_edge)
        .chars()
        .map(|c| {
            if matches!(c, '\u{2019}' | '\u{2018}') {
                '\''
            } else {
                c
            }
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Characters stripped from both ends of a token.
fn is_edge(c: char) -> bool {
    const MARKERS: &[char] = &['\u{0120}', '\u{2581}', '\u{010A}', '\u{0109}'];
    const PUNCTUATION: &[char] = &[
        '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2026}', '\u{2013}', '\u{2014}',
        '\u{00AB}', '\u{00BB}', '\u{00A1}', '\u{00BF}', '\u{3002}', '\u{FF0C}',
    ];
    c.is_whitespace()
        || c.is_ascii_punctuation()
        || MARKERS.contains(&c)
        || PUNCTUATION.contains(&c)
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

fn invalid(path: &Path, key: &str, marker: Marker, message: impl Into<String>) -> WordListError {
    WordListError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        line: marker.line().max(1),
        column: marker.col() + 1,
        message: message.into(),
    }
}

/// A YAML node with its position. Scalars stay strings, so entries such as
/// `no` or `null` are words, not booleans or nulls.
#[derive(Debug)]
enum Node {
    Scalar(String, Marker),
    Sequence(Vec<Node>, Marker),
    /// Keys with their positions, and values, in file order.
    Mapping(Vec<(Node, Node)>, Marker),
    /// An alias or an event that has no place in word lists.
    Other(Marker),
}

impl Node {
    fn build(
        event: Event,
        marker: Marker,
        events: &mut std::iter::Peekable<std::vec::IntoIter<(Event, Marker)>>,
    ) -> Self {
        match event {
            Event::Scalar(value, ..) => Self::Scalar(value, marker),
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                while let Some((event, marker)) = events.next() {
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(Self::build(event, marker, events));
                }
                Self::Sequence(items, marker)
            }
            Event::MappingStart(..) => {
                let mut entries = Vec::new();
                while let Some((event, key_marker)) = events.next() {
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key = Self::build(event, key_marker, events);
                    let value = match events.next() {
                        Some((event, marker)) => Self::build(event, marker, events),
                        None => Self::Other(key_marker),
                    };
                    entries.push((key, value));
                }
                Self::Mapping(entries, marker)
            }
            _ => Self::Other(marker),
        }
    }

    /// Returns the node's position; for a mapping, that of its first key,
    /// because yaml-rust2 places a block mapping's start after that key.
    fn marker(&self) -> Marker {
        match self {
            Self::Mapping(entries, marker) => {
                entries.first().map_or(*marker, |(key, _)| key.marker())
            }
            Self::Scalar(_, marker) | Self::Sequence(_, marker) | Self::Other(marker) => *marker,
        }
    }

    /// Returns whether the node is an empty value (`key:` or `key: ~`).
    fn is_null(&self) -> bool {
        matches!(self, Self::Scalar(value, _) if value.is_empty() || value == "~" || value == "null")
    }
}

/// The kind of list an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Words,
    Prefixes,
}

/// An entry already read, to report duplicates and hidden entries.
#[derive(Debug, Clone)]
struct Defined {
    entry: String,
    kind: ListKind,
    group: Group,
    key: String,
    line: usize,
}

/// Checks the node tree of a word-list file and builds the lists.
struct Checker<'a> {
    path: &'a Path,
    defined: Vec<Defined>,
}

impl Checker<'_> {
    fn error(&self, key: &str, marker: Marker, message: impl Into<String>) -> WordListError {
        invalid(self.path, key, marker, message)
    }

    fn document(mut self, root: &Node) -> Result<WordLists, WordListError> {
        let Node::Mapping(entries, _) = root else {
            return Err(self.error(
                "",
                root.marker(),
                "the word lists must be a mapping with the key `groups`",
            ));
        };
        let mut groups_node = None;
        for (key, value) in entries {
            match key {
                Node::Scalar(name, _) if name == "groups" => {
                    if groups_node.is_some() {
                        return Err(self.error("groups", key.marker(), "duplicate key `groups`"));
                    }
                    groups_node = Some(value);
                }
                Node::Scalar(name, _) => {
                    return Err(self.error(
                        name,
                        key.marker(),
                        format!("unknown key `{name}`; expected `groups`"),
                    ))
                }
                _ => return Err(self.error("", key.marker(), "keys must be plain strings")),
            }
        }
        let Some(groups_node) = groups_node else {
            return Err(self.error(
                "groups",
                root.marker(),
                "missing key `groups`: list the negative, positive and neutral groups",
            ));
        };
        let Node::Sequence(items, marker) = groups_node else {
            return Err(self.error(
                "groups",
                groups_node.marker(),
                "expected a list of groups, each with `name`, `words` and `prefixes`",
            ));
        };
        if items.is_empty() {
            return Err(self.error(
                "groups",
                *marker,
                "no groups defined; define at least one of negative, positive, neutral",
            ));
        }

        let mut groups: Vec<GroupEntries> = Vec::new();
        let mut seen: HashMap<Group, usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let key = format!("groups[{index}]");
            let entries = self.group(&key, item)?;
            if let Some(first) = seen.get(&entries.group) {
                return Err(self.error(
                    &key,
                    item.marker(),
                    format!(
                        "group `{}` is defined twice (first at line {first}); merge the two",
                        entries.group
                    ),
                ));
            }
            seen.insert(entries.group, item.marker().line());
            groups.push(entries);
        }

        let mut words = HashMap::new();
        for (index, entries) in groups.iter().enumerate() {
            for word in &entries.words {
                words.entry(word.clone()).or_insert(index);
            }
        }
        Ok(WordLists {
            path: self.path.to_owned(),
            groups,
            words,
        })
    }

    fn group(&mut self, key: &str, node: &Node) -> Result<GroupEntries, WordListError> {
        let Node::Mapping(entries, _) = node else {
            return Err(self.error(
                key,
                node.marker(),
                "expected a mapping with `name`, `description`, `words` and `prefixes`",
            ));
        };
        let mut name = None;
        let mut lists: Vec<(ListKind, String, &Node)> = Vec::new();
        let mut seen_keys: Vec<&str> = Vec::new();
        for (field, value) in entries {
            let Node::Scalar(field_name, field_marker) = field else {
                return Err(self.error(key, field.marker(), "keys must be plain strings"));
            };
            let field_key = format!("{key}.{field_name}");
            if seen_keys.contains(&field_name.as_str()) {
                return Err(self.error(
                    &field_key,
                    *field_marker,
                    format!("duplicate key `{field_name}`"),
                ));
            }
            seen_keys.push(field_name);
            match field_name.as_str() {
                "name" => {
                    let Node::Scalar(text, value_marker) = value else {
                        return Err(self.error(
                            &field_key,
                            value.marker(),
                            "expected a group name",
                        ));
                    };
                    let group = Group::from_name(text).ok_or_else(|| {
                        self.error(
                            &field_key,
                            *value_marker,
                            format!(
                                "unknown group `{text}`; expected negative, positive or neutral"
                            ),
                        )
                    })?;
                    name = Some(group);
                }
                "description" => {
                    if !matches!(value, Node::Scalar(..)) {
                        return Err(self.error(&field_key, value.marker(), "expected a string"));
                    }
                }
                "words" => lists.push((ListKind::Words, field_key, value)),
                "prefixes" => lists.push((ListKind::Prefixes, field_key, value)),
                other => {
                    return Err(self.error(
                        &field_key,
                        *field_marker,
                        format!(
                            "unknown key `{other}`; expected name, description, words or prefixes"
                        ),
                    ))
                }
            }
        }
        let Some(group) = name else {
            return Err(self.error(
                key,
                node.marker(),
                "missing key `name`: negative, positive or neutral",
            ));
        };
        let mut result = GroupEntries {
            group,
            words: Vec::new(),
            prefixes: Vec::new(),
        };
        for (kind, list_key, value) in lists {
            let list = self.list(group, kind, &list_key, value)?;
            match kind {
                ListKind::Words => result.words = list,
                ListKind::Prefixes => result.prefixes = list,
            }
        }
        Ok(result)
    }

    fn list(
        &mut self,
        group: Group,
        kind: ListKind,
        key: &str,
        node: &Node,
    ) -> Result<Vec<String>, WordListError> {
        if node.is_null() {
            return Ok(Vec::new());
        }
        let Node::Sequence(items, _) = node else {
            return Err(self.error(
                key,
                node.marker(),
                "expected a list of strings, such as `[sorry, cannot]`",
            ));
        };
        let mut list = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{index}]");
            let Node::Scalar(raw, marker) = item else {
                return Err(self.error(
                    &item_key,
                    item.marker(),
                    "expected a string; nested lists and mappings are not allowed here",
                ));
            };
            let entry = normalize(raw);
            if entry.is_empty() {
                return Err(self.error(
                    &item_key,
                    *marker,
                    format!(
                        "`{raw}` is empty after removing whitespace and punctuation at its ends"
                    ),
                ));
            }
            if entry.chars().any(char::is_whitespace) {
                return Err(self.error(
                    &item_key,
                    *marker,
                    format!("`{raw}` contains whitespace, but tokens are matched one at a time; list its words separately"),
                ));
            }
            self.check_unique(&entry, raw, kind, group, &item_key, *marker)?;
            self.defined.push(Defined {
                entry: entry.clone(),
                kind,
                group,
                key: item_key,
                line: marker.line(),
            });
            list.push(entry);
        }
        Ok(list)
    }

    /// Rejects an entry listed before, and one that a prefix of an earlier
    /// group already matches (it could never match).
    fn check_unique(
        &self,
        entry: &str,
        raw: &str,
        kind: ListKind,
        group: Group,
        key: &str,
        marker: Marker,
    ) -> Result<(), WordListError> {
        if let Some(first) = self.defined.iter().find(|defined| defined.entry == entry) {
            return Err(self.error(
                key,
                marker,
                format!(
                    "`{raw}` is already listed at {} (line {}); each entry may appear once",
                    first.key, first.line
                ),
            ));
        }
        let hidden_by = self.defined.iter().find(|defined| {
            defined.kind == ListKind::Prefixes
                && defined.group != group
                && entry.starts_with(defined.entry.as_str())
        });
        if let Some(prefix) = hidden_by {
            let what = match kind {
                ListKind::Words => "word",
                ListKind::Prefixes => "prefix",
            };
            return Err(self.error(
                key,
                marker,
                format!(
                    "the {what} `{raw}` can never match: the prefix `{}` of the earlier group {} ({}, line {}) matches it first; remove one of them",
                    prefix.entry, prefix.group, prefix.key, prefix.line
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTS: &str = "\
groups:
  - name: negative
    description: Refusals.
    words: [sorry, cannot, \"can't\", unfortunately, \"no\"]
    prefixes: [apolog, illeg]
  - name: positive
    words: [sure, certainly, \"yes\"]
    prefixes: [happ, glad]
  - name: neutral
    words: [the, a]
    prefixes: [\"i'm\"]
";

    fn lists() -> WordLists {
        WordLists::parse(LISTS, Path::new("lists.yaml")).unwrap()
    }

    fn parse(text: &str) -> WordLists {
        WordLists::parse(text, Path::new("lists.yaml")).unwrap()
    }

    fn error(text: &str) -> String {
        WordLists::parse(text, Path::new("lists.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn normalize_strips_markers_and_punctuation() {
        assert_eq!(normalize("\u{0120}Sorry"), "sorry");
        assert_eq!(normalize("\u{2581}Sure"), "sure");
        assert_eq!(normalize(" sure!"), "sure");
        assert_eq!(normalize("\"Certainly,\""), "certainly");
        assert_eq!(normalize("\u{010A}\u{010A}"), "");
        assert_eq!(normalize(" can\u{2019}t."), "can't");
        assert_eq!(normalize("\u{2026}"), "");
    }

    #[test]
    fn whole_words_match_exactly() {
        let lists = lists();
        assert_eq!(lists.group_of("\u{0120}Sorry"), Some(Group::Negative));
        assert_eq!(lists.group_of(" sure"), Some(Group::Positive));
        assert_eq!(lists.group_of("\u{2581}Sure"), Some(Group::Positive));
        assert_eq!(lists.group_of("Can't"), Some(Group::Negative));
        assert_eq!(lists.group_of("No"), Some(Group::Negative));
        // A whole-word entry does not match longer or shorter tokens.
        assert_eq!(lists.group_of("sorrow"), None);
        assert_eq!(lists.group_of("sur"), None);
        assert_eq!(lists.group_of("surely"), None);
    }

    #[test]
    fn prefixes_match_starts_of_tokens() {
        let lists = lists();
        assert_eq!(lists.group_of(" apologize"), Some(Group::Negative));
        assert_eq!(lists.group_of("Apolog"), Some(Group::Negative));
        assert_eq!(lists.group_of("Illegally"), Some(Group::Negative));
        assert_eq!(lists.group_of("happy"), Some(Group::Positive));
        assert_eq!(lists.group_of("I\u{2019}m"), Some(Group::Neutral));
        // A token shorter than the prefix does not match.
        assert_eq!(lists.group_of("apo"), None);
    }

    #[test]
    fn punctuation_and_whitespace_tokens_match_nothing() {
        let lists = lists();
        assert_eq!(lists.group_of(""), None);
        assert_eq!(lists.group_of("   "), None);
        assert_eq!(lists.group_of("\u{010A}"), None);
        assert_eq!(lists.group_of("!"), None);
        assert_eq!(lists.group_of("weapon"), None);
    }

    #[test]
    fn first_group_in_file_wins() {
        // `sorrow` matches the whole word of `positive` and the prefix of
        // `negative`; the group listed first wins, whichever kind matches.
        let lists = parse(
            "groups:\n  - name: positive\n    words: [sorrow]\n  - name: negative\n    prefixes: [sor]\n",
        );
        assert_eq!(lists.group_of("sorrow"), Some(Group::Positive));
        assert_eq!(lists.group_of("sorry"), Some(Group::Negative));
        assert_eq!(
            lists.groups().collect::<Vec<_>>(),
            [Group::Positive, Group::Negative]
        );
    }

    #[test]
    fn yaml_keywords_stay_words() {
        let lists = parse("groups:\n  - name: negative\n    words: [no, null, false, off]\n");
        assert_eq!(lists.group_of("No"), Some(Group::Negative));
        assert_eq!(lists.group_of("null"), Some(Group::Negative));
        assert_eq!(lists.group_of("false"), Some(Group::Negative));
        assert_eq!(lists.group_of("Off"), Some(Group::Negative));
    }

    #[test]
    fn empty_lists_and_missing_keys_allowed() {
        let lists = parse(
            "groups:\n  - name: negative\n    words:\n    prefixes: []\n  - name: positive\n    prefixes: [sur]\n",
        );
        assert_eq!(lists.group_of("sure"), Some(Group::Positive));
        assert_eq!(lists.group_of("sorry"), None);
    }

    #[test]
    fn project_word_lists_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/word-lists.yaml");
        let lists = WordLists::load(&path).unwrap();
        assert_eq!(
            lists.groups().collect::<Vec<_>>(),
            [Group::Negative, Group::Positive, Group::Neutral]
        );
        assert_eq!(lists.group_of("\u{0120}Sorry"), Some(Group::Negative));
        assert_eq!(lists.group_of("\u{2581}Sure"), Some(Group::Positive));
        assert_eq!(lists.group_of(" I"), Some(Group::Neutral));
    }

    #[test]
    fn unknown_group_named_with_line() {
        let message = error("groups:\n  - name: negative\n  - name: refusal\n");
        assert!(
            message.starts_with("lists.yaml:3:11: groups[1].name:"),
            "{message}"
        );
        assert!(message.contains("unknown group `refusal`"), "{message}");
    }

    #[test]
    fn unknown_key_named_with_line() {
        let message = error("groups:\n  - name: negative\n    word: [sorry]\n");
        assert!(
            message.starts_with("lists.yaml:3:5: groups[0].word:"),
            "{message}"
        );
        assert!(
            message.contains("expected name, description, words or prefixes"),
            "{message}"
        );

        let message = error("version: 1\ngroups: []\n");
        assert!(message.starts_with("lists.yaml:1:1: version:"), "{message}");
    }

    #[test]
    fn missing_name_rejected() {
        let message = error("groups:\n  - words: [sorry]\n");
        assert!(
            message.starts_with("lists.yaml:2:5: groups[0]:"),
            "{message}"
        );
        assert!(message.contains("missing key `name`"), "{message}");
    }

    #[test]
    fn non_string_entry_named_with_line() {
        let message =
            error("groups:\n  - name: negative\n    words:\n      - sorry\n      - [a, b]\n");
        assert!(
            message.starts_with("lists.yaml:5:9: groups[0].words[1]:"),
            "{message}"
        );
    }

    #[test]
    fn list_must_be_a_sequence() {
        let message = error("groups:\n  - name: positive\n    words: sure\n");
        assert!(
            message.starts_with("lists.yaml:3:12: groups[0].words:"),
            "{message}"
        );
        assert!(message.contains("expected a list"), "{message}");
    }

    #[test]
    fn duplicate_entry_across_groups_rejected() {
        let message = error(
            "groups:\n  - name: negative\n    words: [sorry]\n  - name: positive\n    words: [Sorry]\n",
        );
        assert!(
            message.starts_with("lists.yaml:5:13: groups[1].words[0]:"),
            "{message}"
        );
        assert!(message.contains("groups[0].words[0] (line 3)"), "{message}");
    }

    #[test]
    fn entry_hidden_by_earlier_prefix_rejected() {
        let message = error(
            "groups:\n  - name: negative\n    prefixes: [safe]\n  - name: positive\n    words: [safely]\n",
        );
        assert!(message.contains("groups[1].words[0]"), "{message}");
        assert!(
            message.contains("prefix `safe` of the earlier group negative"),
            "{message}"
        );
        // Within one group a prefix may cover a listed word.
        let lists =
            parse("groups:\n  - name: negative\n    words: [safely]\n    prefixes: [safe]\n");
        assert_eq!(lists.group_of("safely"), Some(Group::Negative));
    }

    #[test]
    fn duplicate_group_rejected() {
        let message = error("groups:\n  - name: negative\n  - name: negative\n");
        assert!(
            message.starts_with("lists.yaml:3:5: groups[1]:"),
            "{message}"
        );
        assert!(
            message.contains("defined twice (first at line 2)"),
            "{message}"
        );
    }

    #[test]
    fn entry_with_whitespace_rejected() {
        let message = error("groups:\n  - name: positive\n    words: [\"of course\"]\n");
        assert!(message.contains("groups[0].words[0]"), "{message}");
        assert!(message.contains("contains whitespace"), "{message}");
    }

    #[test]
    fn punctuation_only_entry_rejected() {
        let message = error("groups:\n  - name: positive\n    words: [\"!\"]\n");
        assert!(message.contains("is empty after removing"), "{message}");
    }

    #[test]
    fn empty_and_malformed_files_rejected() {
        assert!(error("").contains("the file is empty"), "{}", error(""));
        assert!(error("- sorry\n").contains("must be a mapping"));
        assert!(error("{}\n").contains("missing key `groups`"));
        assert!(error("groups: []\n").contains("no groups defined"));
        assert!(error("groups: {negative: []}\n").contains("expected a list of groups"));
    }

    #[test]
    fn syntax_error_has_position() {
        let message = error("groups:\n  - name: negative\n    words: [sorry\n");
        assert!(message.starts_with("lists.yaml:"), "{message}");
        assert!(message.contains("invalid YAML"), "{message}");
    }

    #[test]
    fn load_names_missing_file() {
        let message = WordLists::load(Path::new("/nonexistent/lists.yaml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/lists.yaml"), "{message}");
    }
}
