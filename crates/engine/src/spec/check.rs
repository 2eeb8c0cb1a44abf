//! Parsing a spec and the checks that run after deserialization.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::locate::{self, Locations, Position};
use super::paths;
use super::{
    is_gguf_path, DatasetFormat, LayerSelection, LensSection, LoadOptions, LoadedSpec, Positions,
    Spec, SpecError, SpecFiles, SpecIssue, SpecWarning, TaskKind,
};
use crate::graph;
use crate::hub::{self, HubError};

pub(super) fn load(
    text: &str,
    spec_path: &Path,
    current_dir: &Path,
    options: &LoadOptions,
) -> Result<LoadedSpec, SpecError> {
    let invalid = |issues: Vec<SpecIssue>| SpecError::Invalid {
        path: spec_path.to_owned(),
        issues,
    };

    let locations = Locations::parse(text).map_err(|errors| {
        invalid(
            errors
                .into_iter()
                .map(|error| SpecIssue {
                    key: error.key,
                    position: error.position,
                    message: error.message,
                })
                .collect(),
        )
    })?;

    let mut spec: Spec = if text.trim().is_empty() {
        return Err(invalid(vec![SpecIssue {
            key: String::new(),
            position: Position { line: 1, column: 1 },
            message: "the spec is empty; it needs at least `name`, `models` and `datasets`"
                .to_owned(),
        }]));
    } else {
        serde_yaml::from_str(text)
            .map_err(|error| invalid(vec![serde_issue(&error, &locations)]))?
    };

    let spec_dir = spec_path
        .parent()
        .map_or_else(|| current_dir.to_owned(), Path::to_owned);
    let mut checker = Checker {
        locations: &locations,
        options,
        spec_dir: &spec_dir,
        current_dir,
        issues: Vec::new(),
        warnings: Vec::new(),
    };
    let output_dir = checker.check(&mut spec);
    if !checker.issues.is_empty() {
        return Err(invalid(checker.issues));
    }
    let warnings = checker.warnings;
    spec.files = SpecFiles {
        spec_path: spec_path.to_owned(),
        spec_dir,
        output_dir,
    };
    Ok(LoadedSpec { spec, warnings })
}

/// Turns a `serde_yaml` error into an issue with the most precise key and
/// position available. `serde_yaml` writes messages as `path: message at line
/// L column C`, without the path at the top level.
fn serde_issue(error: &serde_yaml::Error, locations: &Locations) -> SpecIssue {
    let full = error.to_string();
    let message = match full.rfind(" at line ") {
        Some(cut) if error.location().is_some() => full[..cut].to_owned(),
        _ => full.clone(),
    };
    let (prefix, message) = match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(char::is_whitespace) && !prefix.contains('`') => {
            (prefix.to_owned(), rest.to_owned())
        }
        _ => (String::new(), message),
    };
    let serde_position = error.location().map(|location| Position {
        line: location.line(),
        column: location.column(),
    });

    if let Some(field) = backticked_after(&message, "unknown field ") {
        let key = locate::join(&prefix, field);
        let position = locations
            .key(&key)
            .or(serde_position)
            .unwrap_or_else(|| locations.nearest_key(&prefix));
        return SpecIssue {
            key,
            position,
            message,
        };
    }
    if let Some(field) = backticked_after(&message, "missing field ") {
        return SpecIssue {
            key: locate::join(&prefix, field),
            position: locations.nearest_key(&prefix),
            message,
        };
    }
    let position = serde_position.unwrap_or_else(|| locations.nearest_value(&prefix));
    SpecIssue {
        key: prefix,
        position,
        message,
    }
}

/// Returns the name in backticks that follows `marker` in `message`.
fn backticked_after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(marker)?.strip_prefix('`')?;
    rest.split('`').next()
}

/// Returns whether `name` can be one folder name in an output path.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Makes a model name from a file or folder name: lowercase, with every
/// character other than letters, digits, `.`, `_` and `-` replaced by `-`.
fn slugify(text: &str) -> String {
    let slug: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug.trim_start_matches('.').to_owned()
}

struct Checker<'a> {
    locations: &'a Locations,
    options: &'a LoadOptions,
    spec_dir: &'a Path,
    current_dir: &'a Path,
    issues: Vec<SpecIssue>,
    warnings: Vec<SpecWarning>,
}

impl Checker<'_> {
    /// Reports a problem at the key `key` (or its closest ancestor).
    fn at_key(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(SpecIssue {
            key: key.to_owned(),
            position: self.locations.nearest_key(key),
            message: message.into(),
        });
    }

    /// Reports a problem with the value at `key`.
    fn at_value(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push(SpecIssue {
            key: key.to_owned(),
            position: self.locations.nearest_value(key),
            message: message.into(),
        });
    }

    fn resolve(&mut self, key: &str, raw: &Path, base: &Path) -> Option<PathBuf> {
        let lookup = |name: &str| self.options.lookup(name);
        match paths::resolve(raw, base, &lookup) {
            Ok(path) => Some(path),
            Err(message) => {
                self.at_value(key, message);
                None
            }
        }
    }

    /// Runs every check, rewrites paths to absolute ones, and returns the
    /// output folder.
    fn check(&mut self, spec: &mut Spec) -> PathBuf {
        if !is_valid_name(&spec.name) {
            self.at_value(
                "name",
                format!(
                    "invalid name `{}`; use letters, digits, `-`, `_` and `.` (it becomes a folder name)",
                    spec.name
                ),
            );
        }
        let output_dir = match spec.output.clone() {
            Some(raw) => self
                .resolve("output", &raw, self.current_dir)
                .unwrap_or_default(),
            None => self.current_dir.join("outputs").join(&spec.name),
        };

        self.check_datasets(spec);
        self.check_models(spec);
        let classes: BTreeSet<String> = spec.datasets.keys().cloned().collect();
        self.check_tokenize(spec);
        self.check_extract(spec);
        self.check_probe(spec, &classes);
        self.check_lens(spec);
        self.check_graft(spec, &classes);
        self.check_aggregate(spec);
        output_dir
    }

    fn check_datasets(&mut self, spec: &mut Spec) {
        if spec.datasets.is_empty() {
            self.at_key("datasets", "no datasets; add at least one class");
        }
        let spec_dir = self.spec_dir.to_owned();
        for (class, dataset) in &mut spec.datasets {
            let key = locate::join("datasets", class);
            if !class
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                || class.is_empty()
            {
                self.at_key(
                    &key,
                    format!("invalid class name `{class}`; use letters, digits, `-` and `_`"),
                );
            }
            let path_key = locate::join(&key, "path");
            if let Some(path) = self.resolve(&path_key, &dataset.path, &spec_dir) {
                if !path.is_file() {
                    self.at_value(&path_key, format!("file not found: {}", path.display()));
                }
                dataset.path = path;
            }
            if dataset.format.is_none() {
                dataset.format = DatasetFormat::from_path(&dataset.path);
                if dataset.format.is_none() {
                    self.at_value(
                        &path_key,
                        format!(
                            "cannot infer the format of {}; set `format` to csv, jsonl, json or parquet",
                            dataset.path.display()
                        ),
                    );
                }
            }
            if dataset.column.trim().is_empty() {
                self.at_value(&locate::join(&key, "column"), "`column` is empty");
            }
            if dataset.limit == Some(0) {
                self.at_value(
                    &locate::join(&key, "limit"),
                    "`limit` must be at least 1; remove it to keep every prompt",
                );
            }
        }
    }

    fn check_models(&mut self, spec: &mut Spec) {
        if spec.models.is_empty() {
            self.at_key("models", "no models; add at least one with `path` or `id`");
        }
        let spec_dir = self.spec_dir.to_owned();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (index, model) in spec.models.iter_mut().enumerate() {
            let key = locate::index("models", index);
            match (&model.path, &model.id) {
                (Some(_), Some(_)) => {
                    self.at_key(&key, "set either `path` or `id`, not both");
                }
                (None, None) => {
                    self.at_key(
                        &key,
                        "missing `path` (a model folder or .gguf file) or `id` (an HF hub id)",
                    );
                }
                (Some(raw), None) => {
                    let path_key = locate::join(&key, "path");
                    if model.revision.is_some() {
                        self.at_key(
                            &locate::join(&key, "revision"),
                            "`revision` applies only to models given by `id`",
                        );
                    }
                    if let Some(path) = self.resolve(&path_key, &raw.clone(), &spec_dir) {
                        self.check_model_path(&path_key, &path);
                        model.local_path = Some(path.clone());
                        model.path = Some(path);
                    }
                }
                (None, Some(id)) => {
                    let lookup = |name: &str| self.options.lookup(name);
                    match hub::resolve(id, model.revision.as_deref(), &lookup) {
                        Ok(path) => model.local_path = Some(path),
                        Err(
                            error @ (HubError::InvalidId { .. } | HubError::InvalidRevision { .. }),
                        ) => {
                            self.at_value(&locate::join(&key, "id"), error.to_string());
                        }
                        Err(error) => {
                            model.resolve_error = Some(error.to_string());
                            let id_key = locate::join(&key, "id");
                            self.warnings.push(SpecWarning {
                                position: self.locations.nearest_value(&id_key),
                                key: id_key,
                                message: error.to_string(),
                            });
                        }
                    }
                }
            }

            let name_key = locate::join(&key, "name");
            if model.name.is_empty() {
                model.name = derived_model_name(model);
            } else if !is_valid_name(&model.name) {
                self.at_value(
                    &name_key,
                    format!(
                        "invalid model name `{}`; use letters, digits, `-`, `_` and `.`",
                        model.name
                    ),
                );
            }
            if graph::is_cross_model_stage(&model.name) {
                self.at_value(
                    &name_key,
                    format!(
                        "model name `{}` is reserved for the cross-model stage's output folder; choose another",
                        model.name
                    ),
                );
            }
            if let Some(first) = names.get(&model.name) {
                let message = format!(
                    "model name `{}` is already used by models[{first}]; set `name` to tell them apart",
                    model.name
                );
                if self.locations.contains(&name_key) {
                    self.at_value(&name_key, message);
                } else {
                    self.at_key(&key, message);
                }
            } else {
                names.insert(model.name.clone(), index);
            }

            let devices_key = locate::join(&key, "devices");
            if model.devices.is_empty() {
                self.at_value(&devices_key, "`devices` is empty; list at least one device");
            }
            let mut seen = BTreeSet::new();
            for (position, device) in model.devices.iter().enumerate() {
                if !seen.insert(*device) {
                    self.at_value(
                        &locate::index(&devices_key, position),
                        format!("device `{device}` is listed twice"),
                    );
                }
            }
        }
    }

    fn check_model_path(&mut self, key: &str, path: &Path) {
        if is_gguf_path(path) {
            if !path.is_file() {
                self.at_value(key, format!("file not found: {}", path.display()));
            }
        } else if !path.is_dir() {
            self.at_value(
                key,
                format!(
                    "model folder not found: {}; point `path` at an HF model folder or a .gguf file",
                    path.display()
                ),
            );
        } else if !path.join("config.json").is_file() {
            self.at_value(
                key,
                format!(
                    "{} has no config.json; point `path` at an HF model folder or a .gguf file",
                    path.display()
                ),
            );
        }
    }

    fn check_tokenize(&mut self, spec: &Spec) {
        if let Some(tokenize) = &spec.tokenize {
            if tokenize.max_tokens == 0 {
                self.at_value("tokenize.max_tokens", "`max_tokens` must be at least 1");
            }
        }
    }

    fn check_extract(&mut self, spec: &Spec) {
        let Some(extract) = &spec.extract else {
            return;
        };
        if let LayerSelection::List(layers) = &extract.layers {
            if layers.is_empty() {
                self.at_value(
                    "extract.layers",
                    "`layers` is empty; write `all` or list indices",
                );
            }
            self.check_unique_layers("extract.layers", layers);
        }
        if extract.positions == Positions::LastN(0) {
            self.at_value("extract.positions", "`last_n` must be at least 1");
        }
        for (name, value) in [
            ("batch_size", extract.batch_size),
            ("batch_tokens", extract.batch_tokens),
        ] {
            if value == Some(0) {
                self.at_value(
                    &format!("extract.{name}"),
                    format!("`{name}` must be at least 1"),
                );
            }
        }
        if extract.shard_size == 0 {
            self.at_value("extract.shard_size", "`shard_size` must be at least 1");
        }
        if extract.lens.top_k == 0 {
            self.at_value("extract.lens.top_k", "`top_k` must be at least 1");
        }
    }

    fn check_unique_layers(&mut self, key: &str, layers: &[usize]) {
        let mut seen = BTreeSet::new();
        for (position, layer) in layers.iter().enumerate() {
            if !seen.insert(*layer) {
                self.at_value(
                    &locate::index(key, position),
                    format!("layer {layer} is listed twice"),
                );
            }
        }
    }

    fn check_class(&mut self, key: &str, class: &str, classes: &BTreeSet<String>) {
        if !classes.contains(class) {
            let defined: Vec<&str> = classes.iter().map(String::as_str).collect();
            self.at_value(
                key,
                format!(
                    "class `{class}` is not defined in `datasets` (defined: {})",
                    defined.join(", ")
                ),
            );
        }
    }

    fn check_class_list(&mut self, key: &str, list: &[String], classes: &BTreeSet<String>) {
        let mut seen = BTreeSet::new();
        for (position, class) in list.iter().enumerate() {
            let item = locate::index(key, position);
            self.check_class(&item, class, classes);
            if !seen.insert(class) {
                self.at_value(&item, format!("class `{class}` is listed twice"));
            }
        }
    }

    fn check_probe(&mut self, spec: &Spec, classes: &BTreeSet<String>) {
        let Some(probe) = &spec.probe else {
            return;
        };
        if probe.tasks.is_empty() {
            self.at_key(
                "probe.tasks",
                "no probe tasks; add one such as `{name: harmful, kind: binary, classes: [normal, malicious]}`",
            );
        }
        let mut names = BTreeSet::new();
        for (index, task) in probe.tasks.iter().enumerate() {
            let key = locate::index("probe.tasks", index);
            if !is_valid_name(&task.name) {
                self.at_value(
                    &locate::join(&key, "name"),
                    format!(
                        "invalid task name `{}`; use letters, digits, `-`, `_` and `.`",
                        task.name
                    ),
                );
            }
            if !names.insert(task.name.as_str()) {
                self.at_value(
                    &locate::join(&key, "name"),
                    format!("task name `{}` is used twice", task.name),
                );
            }
            self.check_task(&key, task, classes);
        }

        let classifiers = &probe.classifiers;
        if classifiers.svm.is_none() && classifiers.mlp.is_none() && classifiers.logistic.is_none()
        {
            self.at_value(
                "probe.classifiers",
                "no classifier enabled; add `svm`, `mlp` or `logistic`",
            );
        }
        if let Some(svm) = &classifiers.svm {
            self.check_positive("probe.classifiers.svm.c", svm.c);
            if svm.max_train_samples == Some(0) {
                self.at_value(
                    "probe.classifiers.svm.max_train_samples",
                    "`max_train_samples` must be at least 1; remove it to use every sample",
                );
            }
        }
        if let Some(mlp) = &classifiers.mlp {
            self.check_positive("probe.classifiers.mlp.lr", mlp.lr);
            self.check_positive("probe.classifiers.mlp.tol", mlp.tol);
            if !(mlp.alpha >= 0.0 && mlp.alpha.is_finite()) {
                self.at_value("probe.classifiers.mlp.alpha", "`alpha` must be 0 or more");
            }
            for (name, value) in [
                ("hidden", mlp.hidden),
                ("max_epochs", mlp.max_epochs),
                ("batch", mlp.batch),
                ("patience", mlp.patience),
            ] {
                if value == 0 {
                    self.at_value(
                        &format!("probe.classifiers.mlp.{name}"),
                        format!("`{name}` must be at least 1"),
                    );
                }
            }
        }
        if let Some(logistic) = &classifiers.logistic {
            self.check_positive("probe.classifiers.logistic.c", logistic.c);
            if logistic.max_iter == 0 {
                self.at_value(
                    "probe.classifiers.logistic.max_iter",
                    "`max_iter` must be at least 1",
                );
            }
        }

        if !(probe.test_fraction > 0.0 && probe.test_fraction < 1.0) {
            self.at_value(
                "probe.test_fraction",
                format!(
                    "`test_fraction` must be between 0 and 1 (exclusive); found {}",
                    probe.test_fraction
                ),
            );
        }
        if probe.folds.is_some_and(|folds| folds < 2) {
            self.at_value(
                "probe.folds",
                "`folds` must be at least 2; remove it to use only the held-out split",
            );
        }
    }

    fn check_task(&mut self, key: &str, task: &super::ProbeTask, classes: &BTreeSet<String>) {
        let classes_key = locate::join(key, "classes");
        match task.kind {
            TaskKind::Binary | TaskKind::Multiclass => {
                self.check_class_list(&classes_key, &task.classes, classes);
                let (minimum, exact) = if task.kind == TaskKind::Binary {
                    (2, true)
                } else {
                    (2, false)
                };
                let count = task.classes.len();
                if (exact && count != minimum) || count < minimum {
                    let kind = if exact { "binary" } else { "multiclass" };
                    let needed = if exact { "exactly 2" } else { "at least 2" };
                    self.at_value(
                        &classes_key,
                        format!("a {kind} task needs {needed} classes; found {count}"),
                    );
                }
                for field in ["train_classes", "eval_class", "eval_label"] {
                    let field_key = locate::join(key, field);
                    if self.locations.contains(&field_key) {
                        self.at_key(
                            &field_key,
                            format!("`{field}` applies only to `kind: transfer`; use `classes`"),
                        );
                    }
                }
            }
            TaskKind::Transfer => {
                let train_key = locate::join(key, "train_classes");
                self.check_class_list(&train_key, &task.train_classes, classes);
                if task.train_classes.len() != 2 {
                    self.at_value(
                        &train_key,
                        format!(
                            "a transfer task trains on exactly 2 classes (`train_classes`); found {}",
                            task.train_classes.len()
                        ),
                    );
                }
                if !task.classes.is_empty() {
                    self.at_key(
                        &classes_key,
                        "a transfer task uses `train_classes`, `eval_class` and `eval_label`, not `classes`",
                    );
                }
                let eval_key = locate::join(key, "eval_class");
                match &task.eval_class {
                    Some(class) => self.check_class(&eval_key, class, classes),
                    None => self.at_key(&eval_key, "a transfer task needs `eval_class`"),
                }
                let label_key = locate::join(key, "eval_label");
                match &task.eval_label {
                    Some(label) if !task.train_classes.contains(label) => self.at_value(
                        &label_key,
                        format!(
                            "`eval_label` `{label}` must be one of `train_classes` ({})",
                            task.train_classes.join(", ")
                        ),
                    ),
                    Some(_) => {}
                    None => self.at_key(&label_key, "a transfer task needs `eval_label`"),
                }
            }
        }
    }

    fn check_positive(&mut self, key: &str, value: f64) {
        if !(value > 0.0 && value.is_finite()) {
            let name = key.rsplit('.').next().unwrap_or(key);
            self.at_value(
                key,
                format!("`{name}` must be greater than 0; found {value}"),
            );
        }
    }

    fn check_lens(&mut self, spec: &mut Spec) {
        let Some(lens) = &mut spec.lens else {
            return;
        };
        // A word-list path written in the spec is relative to the spec's
        // folder; the default is relative to the current directory.
        let written = self.locations.contains("lens.word_lists");
        let base = if written {
            self.spec_dir.to_owned()
        } else {
            self.current_dir.to_owned()
        };
        if let Some(path) = self.resolve("lens.word_lists", &lens.word_lists.clone(), &base) {
            if !path.is_file() {
                let hint = if written {
                    String::new()
                } else {
                    format!(
                        " (the default, {}, relative to the current directory)",
                        LensSection::DEFAULT_WORD_LISTS
                    )
                };
                let message = format!("file not found: {}{hint}", path.display());
                if written {
                    self.at_value("lens.word_lists", message);
                } else {
                    self.at_key("lens.word_lists", message);
                }
            }
            lens.word_lists = path;
        }
        if lens.top_k == 0 {
            self.at_value("lens.top_k", "`top_k` must be at least 1");
        }
        if let Some([first, last]) = lens.layer_range {
            if first > last {
                self.at_value(
                    "lens.layer_range",
                    format!("`layer_range` [{first}, {last}] starts after it ends"),
                );
            }
        }
    }

    fn check_graft(&mut self, spec: &Spec, classes: &BTreeSet<String>) {
        let Some(graft) = &spec.graft else {
            return;
        };
        self.check_class("graft.target_class", &graft.target_class, classes);
        match &graft.source_class {
            Some(class) => {
                self.check_class("graft.source_class", class, classes);
                if *class == graft.target_class {
                    self.at_value(
                        "graft.source_class",
                        format!("`source_class` and `target_class` are both `{class}`"),
                    );
                }
            }
            None => self.at_key(
                "graft.source_class",
                "`graft` needs `source_class`, the class whose states are grafted",
            ),
        }
        self.check_unique_layers("graft.layers", &graft.layers);
        if graft.top_k == 0 {
            self.at_value("graft.top_k", "`top_k` must be at least 1");
        }
    }

    fn check_aggregate(&mut self, spec: &Spec) {
        if let Some(aggregate) = &spec.aggregate {
            let threshold = aggregate.accuracy_threshold;
            if !(0.0..=1.0).contains(&threshold) {
                self.at_value(
                    "aggregate.accuracy_threshold",
                    format!("`accuracy_threshold` must be between 0 and 1; found {threshold}"),
                );
            }
        }
    }
}

fn derived_model_name(model: &super::ModelEntry) -> String {
    let base = match (&model.path, &model.id) {
        (Some(path), _) => {
            let stem = if is_gguf_path(path) {
                path.file_stem()
            } else {
                path.file_name()
            };
            stem.and_then(|name| name.to_str())
                .unwrap_or("model")
                .to_owned()
        }
        (None, Some(id)) => hub::id_basename(id).to_owned(),
        (None, None) => "model".to_owned(),
    };
    let slug = slugify(&base);
    if slug.is_empty() {
        "model".to_owned()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_from_names() {
        assert_eq!(slugify("Llama-2-7b-chat-hf"), "llama-2-7b-chat-hf");
        assert_eq!(slugify("SmolLM2 135M (Q4)"), "smollm2-135m--q4-");
        assert_eq!(slugify(".hidden"), "hidden");
    }

    #[test]
    fn names_for_folders() {
        assert!(is_valid_name("llama2-7b_v1.5"));
        assert!(!is_valid_name(".ihs"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(""));
    }
}
