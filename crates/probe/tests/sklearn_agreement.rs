//! Our probes against scikit-learn on real hidden states. The embedded
//! default model (`SmolLM2-135M-Instruct`, `Q4_1` GGUF) runs the first
//! `PER_CLASS` prompts of data/{normal,malicious,jailbreak}.csv, and each
//! prompt's last-token residual stream at all 31 indices is written as
//! activation shards. The probe sweep and `scripts/sklearn_probe.py` then
//! train on them with the split the sweep wrote to `splits.parquet`.
//!
//! - The SVM's and the logistic regression's accuracy must be within 2
//!   points of scikit-learn's at every layer, task and split, with the
//!   default C and with a small one: both sides solve the same convex
//!   problem to convergence. `PER_CLASS` is 90, so a binary test set has 54
//!   prompts and one differing prediction moves accuracy by less than 2
//!   points.
//! - The MLP's weights come from a different random generator, and
//!   scikit-learn's own accuracy moves a lot with `random_state` on these
//!   small training sets. Over seeds 42 to 49, at eight of the layers, it
//!   spans up to 9 points on the test sets and up to 44 points on the
//!   jailbreak transfer set. So the MLP is checked twice:
//!   `mlp_replays_sklearn_training` trains both from the same initial
//!   weights without shuffling and requires the same loss curve and
//!   weights, and `probe_matches_sklearn` requires the MLP's accuracy
//!   averaged over the layers to be within 5 points of scikit-learn's on
//!   each test set.
//!
//! Needs `just setup` (libtorch and the model file) and the packages of
//! scripts/requirements-test.txt in the Python named by `IHS_PYTHON`
//! (default `.venv/bin/python`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use ihs_engine::spec::{MlpParams, ProbeSection, ProbeTask, TaskKind};
use ihs_model::{
    load_tokenizer, Batch, CausalLm, ForwardRequest, Layers, LoadOptions, PaddingSide, Position,
    PromptFormat, TemplateChoice,
};
use ihs_probe::{
    derived_rng, output_units, run_sweep, write_results, ClassifierKind, MlpModel, MlpWeights,
    ProbeError, ProbeResults, Prompts, Split, TaskPlan, LOGISTIC_TOLERANCE,
};
use ihs_store::{
    layer_dir, read_layer, shard_file_name, write_activation_shard, ActivationRows, StoreDtype,
};
use ndarray::{Array1, Array2, Axis};
use serde_json::{json, Value};

const PER_CLASS: usize = 90;
const CLASSES: [&str; 3] = ["normal", "malicious", "jailbreak"];
const BATCH: usize = 16;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path() -> PathBuf {
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `just setup` to fetch the embedded default model",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    std::env::var_os("IHS_PYTHON")
        .map_or_else(|| repo_root().join(".venv/bin/python"), PathBuf::from)
}

/// Runs `scripts/sklearn_probe.py` with `args`.
fn run_script(args: &[&str]) {
    let python = python();
    let script = repo_root().join("scripts/sklearn_probe.py");
    let status = Command::new(&python)
        .arg(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; set IHS_PYTHON to a Python with the packages in \
                 scripts/requirements-test.txt",
                python.display()
            )
        });
    assert!(
        status.success(),
        "{} failed ({status}); install its packages with `.venv/bin/pip install -r \
         scripts/requirements-test.txt` or set IHS_PYTHON",
        script.display()
    );
}

/// Returns the first `PER_CLASS` prompts of `data/<class>.csv`.
fn prompts(class: &str) -> Vec<String> {
    let path = repo_root().join(format!("data/{class}.csv"));
    let mut reader = csv::Reader::from_path(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "prompt")
        .unwrap_or_else(|| panic!("{} has no `prompt` column", path.display()));
    let prompts: Vec<String> = reader
        .records()
        .take(PER_CLASS)
        .map(|record| record.unwrap()[column].to_owned())
        .collect();
    assert_eq!(prompts.len(), PER_CLASS, "{} is too short", path.display());
    prompts
}

/// The activation shards shared by the tests of this file.
struct Fixture {
    dir: PathBuf,
    activations: PathBuf,
    /// Layers where every prompt has the same state.
    constant_layers: Vec<usize>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sklearn_agreement");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let activations = dir.join("activations");
        let started = Instant::now();
        let constant_layers = write_activations(&activations);
        eprintln!(
            "activations of {} prompts written in {:.1} s; layers with one state for all \
             prompts: {constant_layers:?}",
            PER_CLASS * CLASSES.len(),
            started.elapsed().as_secs_f64()
        );
        Fixture {
            dir,
            activations,
            constant_layers,
        }
    })
}

/// Runs every prompt through the model and writes one shard per layer with
/// each prompt's last-token state. Returns the layers whose states are the
/// same for every prompt.
fn write_activations(activations: &Path) -> Vec<usize> {
    let path = model_path();
    let model = CausalLm::load(&path, &LoadOptions::default()).unwrap();
    let tokenizer = load_tokenizer(&path).unwrap();
    let format = PromptFormat {
        template: TemplateChoice::Model,
        system: None,
    };

    let mut ids = Vec::new();
    let mut classes = Vec::new();
    let mut sequences = Vec::new();
    for class in CLASSES {
        for (i, prompt) in prompts(class).iter().enumerate() {
            ids.push(format!("{class}-{i:03}"));
            classes.push(class.to_owned());
            sequences.push(format.encode(&tokenizer, prompt).unwrap().input_ids);
        }
    }

    // Batch prompts of similar length to keep padding small.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| sequences[i].len());
    let layers = model.num_layers() + 1;
    let hidden = model.config().hidden_size;
    let mut states = vec![vec![0f32; sequences.len() * hidden]; layers];
    let request = ForwardRequest {
        layers: Layers::All,
        position: Position::Last,
        graft: None,
        logits: false,
    };
    for chunk in order.chunks(BATCH) {
        let batch_sequences: Vec<Vec<u32>> = chunk.iter().map(|&i| sequences[i].clone()).collect();
        let batch = Batch::new(&batch_sequences, PaddingSide::Left, tokenizer.pad_id()).unwrap();
        let output = model.forward(&batch, &request).unwrap();
        for (layer, tensor) in output.states.iter().enumerate() {
            let values = Vec::<f32>::try_from(tensor.flatten(0, -1)).unwrap();
            for (row, &prompt) in chunk.iter().enumerate() {
                states[layer][prompt * hidden..(prompt + 1) * hidden]
                    .copy_from_slice(&values[row * hidden..(row + 1) * hidden]);
            }
        }
    }

    let mut constant = Vec::new();
    for (layer, values) in states.into_iter().enumerate() {
        let first = &values[..hidden];
        if values.chunks(hidden).all(|row| row == first) {
            constant.push(layer);
        }
        let rows = ActivationRows {
            prompt_ids: ids.clone(),
            classes: classes.clone(),
            positions: sequences.iter().map(|s| s.len() as i32 - 1).collect(),
            hidden: values,
            hidden_size: hidden,
        };
        let dir = layer_dir(activations, layer);
        std::fs::create_dir_all(&dir).unwrap();
        write_activation_shard(
            &dir.join(shard_file_name(0)),
            &rows,
            layer,
            StoreDtype::F32,
            &[],
        )
        .unwrap();
    }
    constant
}

fn task(name: &str, kind: TaskKind, classes: &[&str]) -> ProbeTask {
    let list = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let mut task = ProbeTask {
        name: name.into(),
        kind,
        classes: Vec::new(),
        train_classes: Vec::new(),
        eval_class: None,
        eval_label: None,
    };
    if kind == TaskKind::Transfer {
        task.train_classes = list(classes);
        task.eval_class = Some("jailbreak".into());
        task.eval_label = Some("malicious".into());
    } else {
        task.classes = list(classes);
    }
    task
}

fn section() -> ProbeSection {
    ProbeSection {
        tasks: vec![
            task("harmful", TaskKind::Binary, &["normal", "malicious"]),
            task("three-way", TaskKind::Multiclass, &CLASSES),
            task(
                "jailbreak-transfer",
                TaskKind::Transfer,
                &["normal", "malicious"],
            ),
        ],
        ..ProbeSection::default()
    }
}

/// Our sweep's results and scikit-learn's accuracies on the same splits.
struct Comparison {
    ours: ProbeResults,
    reference: Value,
}

/// Runs our sweep with `section` and scikit-learn on its splits; `name`
/// keeps the runs' files apart.
fn compare(name: &str, section: &ProbeSection) -> Comparison {
    let fixture = fixture();
    let started = Instant::now();
    let ours = run_sweep(
        &fixture.activations,
        section,
        |_| Ok::<(), ProbeError>(()),
        |_| {},
    )
    .unwrap();
    eprintln!(
        "{name}: probe sweep: {} fits over {} layers in {:.1} s",
        ours.fits,
        ours.layers.len(),
        started.elapsed().as_secs_f64()
    );
    let probe_dir = fixture.dir.join(name);
    std::fs::create_dir_all(&probe_dir).unwrap();
    write_results(&probe_dir, &ours).unwrap();

    let started = Instant::now();
    let output = probe_dir.join("sklearn.json");
    let mut args = vec![
        "accuracy".to_owned(),
        "--activations".to_owned(),
        fixture.activations.display().to_string(),
        "--splits".to_owned(),
        probe_dir.join("splits.parquet").display().to_string(),
        "--output".to_owned(),
        output.display().to_string(),
        "--jobs".to_owned(),
        "2".to_owned(),
        "--seed".to_owned(),
        section.seed.to_string(),
    ];
    let mut option = |name: &str, value: String| {
        args.push(name.to_owned());
        args.push(value);
    };
    let classifiers = &section.classifiers;
    let mut enabled = Vec::new();
    if let Some(svm) = &classifiers.svm {
        enabled.push("svm");
        option("--svm-c", svm.c.to_string());
    }
    if let Some(mlp) = &classifiers.mlp {
        enabled.push("mlp");
        option("--mlp-hidden", mlp.hidden.to_string());
        option("--mlp-lr", mlp.lr.to_string());
        option("--mlp-alpha", mlp.alpha.to_string());
        option("--mlp-max-epochs", mlp.max_epochs.to_string());
        option("--mlp-batch", mlp.batch.to_string());
        option("--mlp-patience", mlp.patience.to_string());
        option("--mlp-tol", mlp.tol.to_string());
    }
    if let Some(logistic) = &classifiers.logistic {
        enabled.push("logistic");
        option("--logistic-c", logistic.c.to_string());
        option("--logistic-max-iter", logistic.max_iter.to_string());
        option("--logistic-tol", LOGISTIC_TOLERANCE.to_string());
    }
    option("--classifiers", enabled.join(","));
    run_script(&args.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!(
        "{name}: scikit-learn: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let reference = serde_json::from_str(&std::fs::read_to_string(output).unwrap()).unwrap();
    Comparison { ours, reference }
}

/// Returns the mismatches of the linear classifiers (SVM, logistic) at
/// every layer, task and split, and the number of comparisons made.
fn linear_mismatches(comparison: &Comparison) -> (Vec<String>, usize) {
    let fixture = fixture();
    let Comparison { ours, reference } = comparison;
    let layers: Vec<usize> = serde_json::from_value(reference["layers"].clone()).unwrap();
    assert_eq!(layers, ours.layers);
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for ((task, classifier, split), accuracies) in our_accuracies(ours) {
        if classifier == ClassifierKind::Mlp {
            continue;
        }
        let key = format!("{task} / {} / {}", classifier.name(), split.name());
        let theirs = reference_accuracies(reference, &task, classifier, split);
        print_table(&key, &layers, &accuracies, &theirs);
        for (i, (&a, &b)) in accuracies.iter().zip(&theirs).enumerate() {
            let layer = layers[i];
            // Where every prompt has the same state, any classifier predicts
            // one class for all of them, and which one is a tie broken
            // differently by each library. Balanced test sets score the same
            // either way; a transfer set (one expected label) does not.
            if split == Split::Transfer && fixture.constant_layers.contains(&layer) {
                continue;
            }
            compared += 1;
            if (a - b).abs() > 0.02 + 1e-9 {
                mismatches.push(format!(
                    "{key} layer {layer}: ours {a:.3}, scikit-learn {b:.3}"
                ));
            }
        }
    }
    (mismatches, compared)
}

fn reference_accuracies(
    reference: &Value,
    task: &str,
    classifier: ClassifierKind,
    split: Split,
) -> Vec<f64> {
    serde_json::from_value(reference["accuracy"][task][classifier.name()][split.name()].clone())
        .unwrap_or_else(|e| {
            panic!(
                "{task} / {} / {}: no scikit-learn accuracies: {e}",
                classifier.name(),
                split.name()
            )
        })
}

fn print_table(key: &str, layers: &[usize], ours: &[f64], theirs: &[f64]) {
    assert_eq!(ours.len(), theirs.len(), "{key}");
    eprintln!("{key}\n  layer   ours  sklearn");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        eprintln!("  {:5}  {a:5.3}  {b:7.3}", layers[i]);
    }
}

fn default_comparison() -> &'static Comparison {
    static COMPARISON: OnceLock<Comparison> = OnceLock::new();
    COMPARISON.get_or_init(|| compare("defaults", &section()))
}

/// Returns our accuracies: (task, classifier, split) -> accuracy per layer.
fn our_accuracies(results: &ProbeResults) -> BTreeMap<(String, ClassifierKind, Split), Vec<f64>> {
    let mut table: BTreeMap<_, Vec<f64>> = BTreeMap::new();
    for row in &results.metrics {
        table
            .entry((row.task.clone(), row.classifier, row.split))
            .or_default()
            .push(row.evaluation.accuracy);
    }
    table
}

#[test]
fn probe_matches_sklearn() {
    let fixture = fixture();
    let comparison = default_comparison();
    assert_eq!(comparison.ours.layers.len(), 31);
    let (mut mismatches, mut compared) = linear_mismatches(comparison);

    for ((task, classifier, split), accuracies) in our_accuracies(&comparison.ours) {
        if classifier != ClassifierKind::Mlp {
            continue;
        }
        let key = format!("{task} / mlp / {}", split.name());
        let theirs = reference_accuracies(&comparison.reference, &task, classifier, split);
        print_table(&key, &comparison.ours.layers, &accuracies, &theirs);
        let bias = accuracies
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a - b)
            .sum::<f64>()
            / accuracies.len() as f64;
        eprintln!("  mean difference over layers: {bias:+.3}");
        // The transfer set's accuracy depends too much on the initial
        // weights for a bound; the replay test covers the procedure.
        if split != Split::Transfer {
            compared += 1;
            if bias.abs() > 0.05 {
                mismatches.push(format!(
                    "{key}: mean accuracy over layers differs by {bias:+.3}"
                ));
            }
        }
    }

    // SVM and logistic: 4 splits x 31 layers, less the constant layers'
    // transfer rows; MLP: 3 test splits.
    let expected = 2 * (4 * 31 - fixture.constant_layers.len()) + 3;
    assert_eq!(compared, expected);
    assert!(
        mismatches.is_empty(),
        "{} of {compared} comparisons with scikit-learn failed:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn regularization_maps_to_sklearn() {
    // C = 1 is the same penalty whether it is read as C or as 1 / C; a
    // small C checks that linfa's alpha and the SVM's bound follow C the way
    // scikit-learn's do.
    const C: f64 = 0.001;
    let mut section = section();
    section.classifiers.mlp = None;
    section.classifiers.svm.as_mut().unwrap().c = C;
    section.classifiers.logistic.as_mut().unwrap().c = C;
    let comparison = compare("small-c", &section);
    let (mismatches, compared) = linear_mismatches(&comparison);
    assert!(compared > 200, "{compared}");
    assert!(
        mismatches.is_empty(),
        "{} of {compared} comparisons with scikit-learn failed at C = {C}:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // The penalty must matter, or the check above proves nothing.
    let defaults = our_accuracies(&default_comparison().ours);
    let changed = our_accuracies(&comparison.ours)
        .iter()
        .filter(|(key, accuracies)| defaults[*key] != **accuracies)
        .count();
    assert!(
        changed >= 2,
        "C = {C} changed only {changed} accuracy curves"
    );
}

fn to_json(matrix: &Array2<f64>) -> Value {
    json!(matrix
        .outer_iter()
        .map(|row| row.to_vec())
        .collect::<Vec<_>>())
}

fn from_json(value: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(value.clone()).unwrap();
    let width = rows.first().map_or(0, Vec::len);
    Array2::from_shape_vec((rows.len(), width), rows.concat()).unwrap()
}

/// Trains our MLP and scikit-learn's from the same initial weights on one
/// task at one layer, without shuffling, and compares the runs.
fn replay(task: &ProbeTask, layer: usize) {
    let fixture = fixture();
    let matrix = read_layer(&fixture.activations, layer).unwrap();
    let prompts = Prompts::from_layer(&matrix);
    let plan = TaskPlan::build(task, &prompts, &section()).unwrap();
    let rows = |samples: &[ihs_probe::Sample]| -> Array2<f64> {
        let indices: Vec<usize> = samples.iter().map(|s| prompts.rows[s.prompt]).collect();
        matrix.states.select(Axis(0), &indices).mapv(f64::from)
    };
    let x = rows(&plan.train);
    let labels: Vec<usize> = plan.train.iter().map(|s| s.label).collect();
    let test_x = rows(&plan.test);
    let n_labels = plan.classes.len();

    // Mini-batches of 50 leave a short last batch, so the batching is
    // exercised as well.
    let params = MlpParams {
        batch: 50,
        ..MlpParams::default()
    };
    let initial = MlpWeights::glorot(
        x.ncols(),
        params.hidden,
        output_units(n_labels),
        &mut derived_rng(1, &["replay", &task.name]),
    );
    let ours = MlpModel::train(x.view(), &labels, n_labels, &params, initial.clone(), None);

    let name = format!("replay-{}", task.name);
    let input = fixture.dir.join(format!("{name}-in.json"));
    let output = fixture.dir.join(format!("{name}-out.json"));
    let spec = json!({
        "x": to_json(&x),
        "labels": labels,
        "hidden_weights": to_json(&initial.hidden_weights),
        "hidden_bias": initial.hidden_bias.to_vec(),
        "output_weights": to_json(&initial.output_weights),
        "output_bias": initial.output_bias.to_vec(),
        "hidden": params.hidden,
        "lr": params.lr,
        "alpha": params.alpha,
        "batch": params.batch,
        "max_epochs": params.max_epochs,
        "patience": params.patience,
        "tol": params.tol,
        "test_x": to_json(&test_x),
    });
    std::fs::write(&input, spec.to_string()).unwrap();
    run_script(&[
        "mlp-replay",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let theirs: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();

    let curve: Vec<f64> = serde_json::from_value(theirs["loss_curve"].clone()).unwrap();
    eprintln!(
        "{}: {} epochs, final loss ours {:.6}, scikit-learn {:.6}",
        task.name,
        ours.epochs(),
        ours.loss_curve.last().unwrap(),
        curve.last().unwrap()
    );
    assert_eq!(ours.epochs(), curve.len(), "{}: epochs run", task.name);
    for (epoch, (a, b)) in ours.loss_curve.iter().zip(&curve).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "{}: epoch {epoch} loss {a} vs {b}",
            task.name
        );
    }

    let weights = ours.weights();
    let pairs = [
        ("hidden_weights", weights.hidden_weights.clone()),
        (
            "hidden_bias",
            weights.hidden_bias.clone().insert_axis(Axis(0)),
        ),
        ("output_weights", weights.output_weights.clone()),
        (
            "output_bias",
            weights.output_bias.clone().insert_axis(Axis(0)),
        ),
    ];
    for (key, ours_matrix) in pairs {
        let theirs_matrix = if key.ends_with("bias") {
            let values: Vec<f64> = serde_json::from_value(theirs[key].clone()).unwrap();
            Array1::from(values).insert_axis(Axis(0))
        } else {
            from_json(&theirs[key])
        };
        assert_eq!(ours_matrix.dim(), theirs_matrix.dim(), "{key}");
        let scale = theirs_matrix.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = (&ours_matrix - &theirs_matrix)
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            diff <= 1e-6 * scale,
            "{}: {key} differs by {diff:.3e} (largest weight {scale:.3e})",
            task.name
        );
    }

    let probabilities = from_json(&theirs["test_proba"]);
    let decisions = ours.decide(test_x.view());
    for (row, &predicted) in decisions.predicted.iter().enumerate() {
        let expected = probabilities
            .row(row)
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &p)| {
                if p > best.1 {
                    (i, p)
                } else {
                    best
                }
            })
            .0;
        assert_eq!(predicted, expected, "{}: test prompt {row}", task.name);
    }
    if let Some(scores) = decisions.scores {
        for (row, score) in scores.iter().enumerate() {
            let ours_p = 1.0 / (1.0 + (-score).exp());
            let theirs_p = probabilities[(row, 1)];
            assert!(
                (ours_p - theirs_p).abs() <= 1e-6,
                "{}: test prompt {row}: probability {ours_p} vs {theirs_p}",
                task.name
            );
        }
    }
}

#[test]
fn mlp_replays_sklearn_training() {
    replay(
        &task("harmful", TaskKind::Binary, &["normal", "malicious"]),
        20,
    );
    replay(&task("three-way", TaskKind::Multiclass, &CLASSES), 20);
}
