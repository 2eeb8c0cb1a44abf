#!/usr/bin/env python3
"""Retrain the probe stage's classifiers with scikit-learn, for comparison.

Two commands:

accuracy
    Reads the activation shards the probe stage reads
    (ACTIVATIONS/layer=LLL/part-SSSSS.parquet) and the splits.parquet it
    wrote, so both sides train and test on the same prompts, and trains at
    every layer:

    - svm: SVC(kernel="linear", C=svm_c) on the prompts marked svm_train;
    - logistic: LogisticRegression(C=logistic_c, max_iter, tol) on features
      centered with the training mean, as the probe does (the intercept is
      not penalized, so centering leaves the optimum's predictions unchanged
      and only speeds up lbfgs);
    - mlp: StandardScaler followed by MLPClassifier with one hidden layer and
      the probe's Adam settings, for each random_state seed, seed + 1, ...

    Writes JSON:

        {"layers": [0, 1, ...],
         "accuracy": {task: {classifier: {split: [accuracy per layer]}}},
         "mlp_by_seed": {task: {split: [[accuracy per seed] per layer]}}}

    where split is "test", "transfer" (transfer tasks: the share of
    eval_class prompts predicted as eval_label) or "cv" (mean fold accuracy,
    when the splits have folds), and the MLP's accuracy is the mean over
    seeds.

mlp-replay
    Trains MLPClassifier from given initial weights without shuffling, so
    that its training can be compared with the probe's MLP step by step.
    Reads JSON with the raw training matrix "x", "labels" (0 to k-1), the
    initial "hidden_weights", "hidden_bias", "output_weights" and
    "output_bias" (scikit-learn's coefs_ and intercepts_ layout), the
    hyperparameters "hidden", "lr", "alpha", "batch", "max_epochs",
    "patience", "tol", and "test_x". Writes JSON with "loss_curve", the
    final weights under the same names, and "test_proba".

Needs the packages in scripts/requirements-test.txt. Example:

    .venv/bin/python scripts/sklearn_probe.py accuracy \\
        --activations outputs/x/smollm2/extract/activations \\
        --splits outputs/x/smollm2/probe/splits.parquet --output sklearn.json
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

CLASSIFIERS = ("svm", "mlp", "logistic")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    accuracy = commands.add_parser("accuracy", help="per-layer accuracy on the probe's splits")
    accuracy.add_argument("--activations", type=Path, required=True,
                          help="folder with the layer=LLL folders")
    accuracy.add_argument("--splits", type=Path, required=True,
                          help="splits.parquet written by the probe stage")
    accuracy.add_argument("--output", type=Path, required=True, help="JSON file to write")
    accuracy.add_argument("--classifiers", default=",".join(CLASSIFIERS),
                          help="comma-separated subset of svm, mlp, logistic")
    accuracy.add_argument("--jobs", type=int, default=1, help="layers trained in parallel")
    accuracy.add_argument("--seed", type=int, default=42, help="first MLP random_state")
    accuracy.add_argument("--mlp-seeds", type=int, default=1,
                          help="MLP fits per unit, with random_state seed, seed + 1, ...")
    accuracy.add_argument("--svm-c", type=float, default=1.0)
    accuracy.add_argument("--logistic-c", type=float, default=1.0)
    accuracy.add_argument("--logistic-max-iter", type=int, default=1000)
    accuracy.add_argument("--logistic-tol", type=float, default=1e-4,
                          help="lbfgs gradient tolerance (scikit-learn's default 1e-4)")
    add_mlp_arguments(accuracy)

    replay = commands.add_parser("mlp-replay", help="train the MLP from given weights")
    replay.add_argument("--input", type=Path, required=True)
    replay.add_argument("--output", type=Path, required=True)
    return parser.parse_args()


def add_mlp_arguments(parser):
    parser.add_argument("--mlp-hidden", type=int, default=100, help="hidden units")
    parser.add_argument("--mlp-lr", type=float, default=0.01, help="learning_rate_init")
    parser.add_argument("--mlp-alpha", type=float, default=0.01, help="L2 penalty")
    parser.add_argument("--mlp-max-epochs", type=int, default=300, help="max_iter")
    parser.add_argument("--mlp-batch", type=int, default=200,
                        help="batch_size, capped at the training set size")
    parser.add_argument("--mlp-patience", type=int, default=10, help="n_iter_no_change")
    parser.add_argument("--mlp-tol", type=float, default=1e-4, help="tol")


def list_layers(activations):
    layers = []
    for path in activations.iterdir():
        index = path.name.removeprefix("layer=")
        if path.is_dir() and index != path.name and index.isdigit():
            layers.append(int(index))
    if not layers:
        sys.exit(f"no layer=LLL folders in {activations}; run the extract stage first")
    return sorted(layers)


def decode_hidden(table):
    """Return the hidden column as a float64 matrix, whatever dtype was stored."""
    metadata = table.schema.metadata or {}
    dtype = metadata.get(b"ihs.dtype", b"f32").decode()
    column = table.column("hidden").combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    if dtype == "f16":
        values = values.astype(np.uint16).view(np.float16)
    elif dtype == "bf16":
        values = (values.astype(np.uint32) << 16).view(np.float32)
    elif dtype != "f32":
        sys.exit(f"unknown ihs.dtype {dtype!r}; expected f32, f16 or bf16")
    return values.astype(np.float64).reshape(-1, width)


def read_layer(activations, layer):
    """Return {prompt_id: state}, one state per prompt: its last stored position."""
    files = sorted((activations / f"layer={layer:03d}").glob("*.parquet"))
    if not files:
        sys.exit(f"no shards for layer {layer} under {activations}")
    ids, positions, states = [], [], []
    for path in files:
        table = pq.read_table(path)
        ids.extend(table.column("prompt_id").to_pylist())
        positions.extend(table.column("position").to_pylist())
        states.append(decode_hidden(table))
    states = np.concatenate(states)
    chosen = {}
    for row, (prompt_id, position) in enumerate(zip(ids, positions)):
        if prompt_id not in chosen or position > positions[chosen[prompt_id]]:
            chosen[prompt_id] = row
    return {prompt_id: states[row] for prompt_id, row in chosen.items()}


def make_mlp(args, n_train, seed):
    return MLPClassifier(
        hidden_layer_sizes=(args.mlp_hidden,),
        learning_rate_init=args.mlp_lr,
        alpha=args.mlp_alpha,
        max_iter=args.mlp_max_epochs,
        batch_size=min(args.mlp_batch, n_train),
        n_iter_no_change=args.mlp_patience,
        tol=args.mlp_tol,
        random_state=seed,
    )


class Centered:
    """A classifier trained and applied on features minus the training mean."""

    def __init__(self, model):
        self.model = model
        self.mean = None

    def fit(self, x, y):
        self.mean = x.mean(axis=0)
        self.model.fit(x - self.mean, y)
        return self

    def predict(self, x):
        return self.model.predict(x - self.mean)


def make_classifier(name, args, n_train, seed):
    if name == "svm":
        return SVC(kernel="linear", C=args.svm_c)
    if name == "logistic":
        return Centered(LogisticRegression(
            C=args.logistic_c, max_iter=args.logistic_max_iter, tol=args.logistic_tol))
    return make_pipeline(StandardScaler(), make_mlp(args, n_train, seed))


def matrix(states, rows):
    return np.stack([states[r["prompt_id"]] for r in rows])


def accuracy(model, states, rows):
    truth = np.array([r["label"] for r in rows])
    return float(np.mean(model.predict(matrix(states, rows)) == truth))


def fit(name, args, states, rows, seed):
    if name == "svm":
        rows = [r for r in rows if r["svm_train"]]
    model = make_classifier(name, args, len(rows), seed)
    return model.fit(matrix(states, rows), np.array([r["label"] for r in rows]))


def evaluate_task(name, args, states, rows, seed):
    """Return {split: accuracy} for one task, classifier, layer and seed."""
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    transfer = [r for r in rows if r["split"] == "transfer"]
    model = fit(name, args, states, train, seed)
    result = {"test": accuracy(model, states, test)}
    if transfer:
        result["transfer"] = accuracy(model, states, transfer)
    folds = sorted({r["fold"] for r in train if r["fold"] is not None})
    if folds:
        scores = []
        for fold in folds:
            held_out = [r for r in train if r["fold"] == fold]
            rest = [r for r in train if r["fold"] != fold]
            scores.append(accuracy(fit(name, args, states, rest, seed), states, held_out))
        result["cv"] = float(np.mean(scores))
    return result


def run_layer(args, classifiers, tasks, layer):
    """Return {(task, classifier, split): [accuracy per seed]} for one layer."""
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    states = read_layer(args.activations, layer)
    results = {}
    for task, rows in tasks.items():
        for name in classifiers:
            seeds = range(args.seed, args.seed + (args.mlp_seeds if name == "mlp" else 1))
            for seed in seeds:
                for split, value in evaluate_task(name, args, states, rows, seed).items():
                    results.setdefault((task, name, split), []).append(value)
    print(f"layer {layer} done", file=sys.stderr, flush=True)
    return results


def command_accuracy(args):
    classifiers = [c for c in args.classifiers.split(",") if c]
    unknown = set(classifiers) - set(CLASSIFIERS)
    if unknown:
        sys.exit(f"unknown classifiers {sorted(unknown)}; choose from {', '.join(CLASSIFIERS)}")

    tasks = {}
    for row in pq.read_table(args.splits).to_pylist():
        tasks.setdefault(row["task"], []).append(row)

    layers = list_layers(args.activations)
    per_layer = Parallel(n_jobs=args.jobs)(
        delayed(run_layer)(args, classifiers, tasks, layer) for layer in layers)

    accuracies = {task: {name: {} for name in classifiers} for task in tasks}
    mlp_by_seed = {task: {} for task in tasks}
    for results in per_layer:
        for (task, name, split), values in results.items():
            accuracies[task][name].setdefault(split, []).append(float(np.mean(values)))
            if name == "mlp":
                mlp_by_seed[task].setdefault(split, []).append(values)
    output = {"layers": layers, "accuracy": accuracies, "mlp_by_seed": mlp_by_seed}
    args.output.write_text(json.dumps(output, indent=1))


def command_mlp_replay(args):
    spec = json.loads(args.input.read_text())
    x = np.array(spec["x"], dtype=np.float64)
    labels = np.array(spec["labels"])
    scaler = StandardScaler().fit(x)
    inputs = scaler.transform(x)
    model = MLPClassifier(
        hidden_layer_sizes=(spec["hidden"],),
        learning_rate_init=spec["lr"],
        alpha=spec["alpha"],
        batch_size=min(spec["batch"], len(labels)),
        n_iter_no_change=spec["patience"],
        tol=spec["tol"],
        shuffle=False,
        warm_start=True,
        max_iter=1,
        random_state=0,
    )
    # One epoch sets up the classes, layer sizes and output activation. Its
    # weights are then replaced by the given initial ones, and a warm-started
    # fit trains from them with a fresh Adam optimizer.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    model.fit(inputs, labels)
    model.coefs_ = [np.array(spec["hidden_weights"]), np.array(spec["output_weights"])]
    model.intercepts_ = [np.array(spec["hidden_bias"]), np.array(spec["output_bias"])]
    model.loss_curve_ = []
    model.best_loss_ = np.inf
    model._no_improvement_count = 0
    model.t_ = 0
    model.set_params(max_iter=spec["max_epochs"])
    model.fit(inputs, labels)

    test = scaler.transform(np.array(spec["test_x"], dtype=np.float64))
    output = {
        "loss_curve": model.loss_curve_,
        "hidden_weights": model.coefs_[0].tolist(),
        "hidden_bias": model.intercepts_[0].tolist(),
        "output_weights": model.coefs_[1].tolist(),
        "output_bias": model.intercepts_[1].tolist(),
        "test_proba": model.predict_proba(test).tolist(),
    }
    args.output.write_text(json.dumps(output))


def main():
    args = parse_args()
    if args.command == "accuracy":
        command_accuracy(args)
    else:
        command_mlp_replay(args)


if __name__ == "__main__":
    main()
