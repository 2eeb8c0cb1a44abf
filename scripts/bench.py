#!/usr/bin/env python3
"""Benchmark ihs against HF transformers and scikit-learn on the embedded model.

Run through `just bench` (which builds ihs in release mode and installs
.venv-bench), or directly:

    .venv-bench/bin/python scripts/bench.py --size quick [--device cpu|cuda]

Every comparison is measured in the same invocation, on the same prompts, with
the same torch version, dtype and thread count, and every figure is the median
of --repeats runs with their min and max:

- extraction: ihs's extract stage against HF transformers run as the
  reference method of Zhou et al. 2024 (arXiv:2406.05644) does (one prompt per forward pass, output_hidden_states=True, every layer's
  last-token state copied to numpy and read through the logit lens, top 5) and
  against a batched HF baseline (the same batches as ihs: length-sorted, left
  padding, attention mask, last-token states only, torch.inference_mode());
  the features of all three are compared value by value;
- the roofline: the decoder's matmul FLOPs for the tokens processed divided by
  the GFLOP/s of a large matmul through tch (`ihs roofline`);
- probes: ihs's probe stage against scikit-learn trained serially on the same
  features and splits (scripts/sklearn_probe.py), with accuracy differences;
- a cached rerun of a pipeline with every stage;
- scaling: extraction and probing at several multiples of the prompt count
  (each prompt repeated).

Writes docs/benchmarks.json (raw figures, one entry per device, kept across
runs on other devices) and renders docs/benchmarks.md from it. Work files go
to outputs/bench/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2"
CLASSES = ("normal", "malicious", "jailbreak")
CLASSIFIERS = ("svm", "mlp", "logistic")
BATCH_SIZE = 16
LENS_TOP_K = 5
SIZES = {
    # Prompts per class at 1x (None: every prompt), runs per figure, the
    # prompt-count multiples, and runs per figure at multiples above 1.
    "quick": {"per_class": 16, "repeats": 3, "scales": [1, 4, 16], "scale_repeats": 1},
    "full": {"per_class": None, "repeats": 5, "scales": [1, 4, 16], "scale_repeats": 3},
}
DTYPES = {"cpu": "f32", "cuda": "bf16"}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser("run", help="run the benchmark (the default)")
    add_run_arguments(run)

    worker = commands.add_parser("hf-worker", help="one HF transformers method, in its own process")
    worker.add_argument("--method", choices=("reference", "batched"), required=True)
    worker.add_argument("--tokens", type=Path, required=True, help="tokens.parquet of the tokenize stage")
    worker.add_argument("--activations", type=Path, required=True,
                        help="ihs's activations folder, to compare the features with")
    worker.add_argument("--repeats", type=int, required=True)
    worker.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    worker.add_argument("--threads", type=int, required=True)
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--output", type=Path, required=True, help="JSON file to write")

    render = commands.add_parser("render", help="rewrite docs/benchmarks.md from docs/benchmarks.json")
    render.add_argument("--figures", type=Path, default=ROOT / "docs" / "benchmarks.json")
    render.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")

    args = parser.parse_args()
    if args.command is None:
        args = parser.parse_args(["run", *sys.argv[1:]])
    return args


def add_run_arguments(parser):
    parser.add_argument("--size", choices=sorted(SIZES), default="quick",
                        help="quick: 16 prompts per class; full: every bundled prompt")
    parser.add_argument("--device", choices=sorted(DTYPES), default="cpu",
                        help="cpu runs in f32, cuda in bf16")
    parser.add_argument("--repeats", type=int,
                        help="runs per figure, multiples above 1 included (default: by size)")
    parser.add_argument("--scales", help="comma-separated prompt-count multiples (default 1,4,16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op threads for torch and ihs (default: every CPU)")
    parser.add_argument("--ihs", type=Path, default=ROOT / "target" / "release" / "ihs",
                        help="the ihs binary")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench",
                        help="folder for specs, datasets and pipeline outputs")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")


# ---------------------------------------------------------------- measuring


def summary(values):
    """Median, min and max of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def run_measured(command, log, env=None):
    """Runs a command to completion; returns its wall seconds and peak RSS in MiB.

    The peak comes from wait4's resource usage of that one child process.
    Linux keeps a process's peak across fork and exec, so the figure is at
    least the parent's resident size at the fork; this script keeps that
    small by not importing torch or scikit-learn itself.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(map(str, command)) + "\n").encode())
        out.flush()
        started = time.perf_counter()
        process = subprocess.Popen([str(c) for c in command], stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        sys.exit(f"bench: {' '.join(map(str, command))} failed with exit code "
                 f"{process.returncode}; the end of {log}:\n" + "\n".join(tail))
    return wall, usage.ru_maxrss / 1024


def thread_env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["RAYON_NUM_THREADS"] = str(threads)
    return env


def read_manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


# ---------------------------------------------------------------- inputs


def read_prompts(per_class):
    """The bundled prompts of each class: the first per_class rows, or all."""
    prompts = {}
    for name in CLASSES:
        with open(ROOT / "data" / f"{name}.csv", newline="", encoding="utf-8") as f:
            rows = [row["prompt"] for row in csv.DictReader(f)]
        prompts[name] = rows if per_class is None else rows[:per_class]
    return prompts


def write_datasets(folder, prompts, scale):
    """One CSV per class with every prompt repeated `scale` times."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in prompts.items():
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt"])
            for row in rows:
                for _ in range(scale):
                    writer.writerow([row])
        paths[name] = path
    return paths


def write_spec(path, name, datasets, device, lens, full):
    """A pipeline spec for the embedded model. `lens` records the extract
    stage's logit-lens top 5; `full` adds the lens, graft and aggregate stages."""
    dtype = DTYPES[device]
    lines = [
        f"name: {name}",
        f"output: {path.parent / 'out'}",
        "models:",
        f"  - path: {MODEL}",
        f"    name: {MODEL_NAME}",
        f"    dtype: {dtype}",
        f"    devices: [{device}]",
        "    template: model",
        "datasets:",
    ]
    for cls, file in datasets.items():
        lines.append(f"  {cls}: {{path: {file}, column: prompt, drop_duplicates: false}}")
    lines += [
        "extract:",
        "  layers: all",
        "  positions: last",
        f"  batch_size: {BATCH_SIZE}",
        "  store_dtype: f32",
        f"  lens: {{enabled: {'true' if lens else 'false'}, top_k: {LENS_TOP_K}}}",
        "probe:",
        "  tasks:",
        "    - {name: harmful, kind: binary, classes: [normal, malicious]}",
        "    - {name: three-way, kind: multiclass, classes: [normal, malicious, jailbreak]}",
        "    - {name: jailbreak-transfer, kind: transfer, train_classes: [normal, malicious],",
        "       eval_class: jailbreak, eval_label: malicious}",
        "  classifiers: {svm: , mlp: , logistic: }",
    ]
    if full:
        lines += [
            f"lens: {{word_lists: {ROOT / 'data' / 'word-lists.yaml'}, top_k: {LENS_TOP_K}}}",
            "graft: {target_class: malicious, source: mean, source_class: jailbreak, "
            "layers: [5, 10, 15, 20, 25], top_k: 5}",
            "aggregate:",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def decoder_flops(config, lengths):
    """Matmul FLOPs of the decoder blocks for prompts of these lengths: the
    q, k, v, o and MLP projections per token, plus QK^T and AV over the causal
    pairs (i attends to j <= i). The lm_head is not counted; extraction does
    not run it."""
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // heads
    inter = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    per_token = 2 * (d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * inter)
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return layers * (per_token * tokens + 2 * 2 * heads * head_dim * pairs)


# ---------------------------------------------------------------- the run


def command_run(args):
    size = SIZES[args.size]
    repeats = args.repeats or size["repeats"]
    scale_repeats = args.repeats or size["scale_repeats"]
    scales = [int(s) for s in args.scales.split(",")] if args.scales else size["scales"]
    if 1 not in scales:
        scales = [1, *scales]
    if not args.ihs.exists():
        sys.exit(f"bench: {args.ihs} does not exist; run `just build` first")
    if not MODEL.exists():
        sys.exit(f"bench: {MODEL} does not exist; run `just setup` first")
    device = args.device
    work = args.work / f"{args.size}-{device}"
    log = work / "bench.log"
    env = thread_env(args.threads)
    ihs = args.ihs.resolve()
    prompts = read_prompts(size["per_class"])
    started = time.perf_counter()
    say = lambda message: print(f"bench [{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    from importlib.metadata import version

    figures = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "size": args.size,
        "device": device,
        "dtype": DTYPES[device],
        "repeats": repeats,
        "scale_repeats": scale_repeats,
        "threads": args.threads,
        "machine": machine_name(device),
        "versions": {"torch": version("torch"), "transformers": version("transformers"),
                     "scikit-learn": version("scikit-learn"),
                     "ihs": subprocess.run([ihs, "--version"], capture_output=True, text=True,
                                           check=True).stdout.split()[-1]},
        "batch_size": BATCH_SIZE,
    }

    say("roofline: ihs roofline")
    roofline_args = [ihs, "roofline", "--json", "--device", device, "--dtype", DTYPES[device],
                     "--repeats", str(max(repeats, 5))]
    roofline = json.loads(subprocess.run(roofline_args, capture_output=True, text=True,
                                         check=True, env=env).stdout)
    figures["roofline"] = roofline

    # 1x: the comparison pipeline (states only) and the full pipeline.
    base = work / "x1"
    datasets = write_datasets(base / "data", prompts, 1)
    spec = write_spec(base / "states" / "spec.yaml", "bench-states", datasets, device, lens=False, full=False)
    full_spec = write_spec(base / "full" / "spec.yaml", "bench-full", datasets, device, lens=True, full=True)
    out = spec.parent / "out" / MODEL_NAME
    full_out = full_spec.parent / "out" / MODEL_NAME

    say("ihs: tokenize, extract and probe once (untimed warm-up)")
    run_measured([ihs, "-q", "run", spec, "--force"], log, env)
    tokens_path = out / "tokenize" / "tokens.parquet"
    lengths = token_lengths(tokens_path)
    figures["prompts"] = len(lengths)
    figures["tokens"] = sum(lengths)

    say(f"ihs extract x{repeats} ({len(lengths)} prompts, {sum(lengths)} tokens)")
    figures["ihs_extract"] = measure_ihs_extract(ihs, spec, out, repeats, log, env)
    say(f"ihs extract with logit lens top {LENS_TOP_K} x{repeats}")
    run_measured([ihs, "-q", "run", full_spec, "--only", "tokenize", "--force"], log, env)
    figures["ihs_extract_lens"] = measure_ihs_extract(ihs, full_spec, full_out, repeats, log, env)

    worker_common = ["--tokens", tokens_path, "--activations", out / "extract" / "activations",
                     "--repeats", str(repeats), "--threads", str(args.threads), "--device", device]
    for method in ("batched", "reference"):
        say(f"HF transformers, {method} x{repeats}")
        result = work / f"hf-{method}.json"
        wall, peak = run_measured([sys.executable, __file__, "hf-worker", "--method", method,
                                   *worker_common, "--output", result], log, env)
        figures[f"hf_{method}"] = {**json.loads(result.read_text()), "peak_rss_mib": peak,
                                   "process_seconds": wall}

    config = figures["hf_batched"]["config"]
    flops = decoder_flops(config, lengths)
    figures["decoder_gflop"] = flops / 1e9
    figures["model_f32_mib"] = figures["hf_batched"]["parameters"] * 4 / 2**20

    say(f"ihs probe x{repeats}")
    figures["ihs_probe"] = measure_ihs_probe(ihs, spec, out, repeats, log, env)
    say(f"scikit-learn serial probe sweep x{repeats}")
    figures["sklearn_probe"] = measure_sklearn(out, work, repeats, log, env)
    figures["probe_accuracy"] = compare_accuracy(out / "probe" / "metrics.parquet",
                                                 work / "sklearn.json")

    say("ihs: every stage once, then cached reruns")
    run_measured([ihs, "-q", "run", full_spec], log, env)
    cached = [run_measured([ihs, "-q", "run", full_spec], log, env)[0] for _ in range(repeats)]
    figures["cached_rerun_seconds"] = summary(cached)

    figures["scaling"] = [scale_row(1, figures["ihs_extract"], figures["ihs_probe"], lengths)]
    for scale in sorted(s for s in scales if s != 1):
        say(f"scaling x{scale}")
        folder = work / f"x{scale}"
        scaled = write_datasets(folder / "data", prompts, scale)
        scaled_spec = write_spec(folder / "spec.yaml", f"bench-x{scale}", scaled, device,
                                 lens=False, full=False)
        scaled_out = folder / "out" / MODEL_NAME
        run_measured([ihs, "-q", "run", scaled_spec, "--only", "tokenize", "--force"], log, env)
        extract = measure_ihs_extract(ihs, scaled_spec, scaled_out, scale_repeats, log, env)
        probe = measure_ihs_probe(ihs, scaled_spec, scaled_out, scale_repeats, log, env)
        figures["scaling"].append(
            scale_row(scale, extract, probe, token_lengths(scaled_out / "tokenize" / "tokens.parquet")))

    figures["bench_seconds"] = time.perf_counter() - started
    all_figures = json.loads(args.figures.read_text()) if args.figures.exists() else {}
    all_figures[device] = figures
    args.figures.write_text(json.dumps(all_figures, indent=2) + "\n")
    args.page.write_text(render_page(all_figures))
    say(f"wrote {args.page.relative_to(ROOT)} and {args.figures.relative_to(ROOT)}")


def machine_name(device):
    if device == "cuda":
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"]
        return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return platform.processor() or platform.machine()


def token_lengths(tokens_path):
    import pyarrow.parquet as pq
    return [int(n) for n in pq.read_table(tokens_path, columns=["n_tokens"]).column("n_tokens").to_pylist()]


def measure_ihs_extract(ihs, spec, out, repeats, log, env):
    """Reruns the extract stage; its manifest splits the time into loading,
    forward passes (with the copy to host memory) and the logit lens."""
    runs = []
    for _ in range(repeats):
        wall, peak = run_measured([ihs, "-q", "run", spec, "--only", "extract", "--force=extract"], log, env)
        manifest = read_manifest(out / "extract")
        metrics = manifest["metrics"]
        runs.append({"process_seconds": wall, "peak_rss_mib": peak,
                     "stage_seconds": manifest["duration_s"],
                     "load_seconds": metrics["load_seconds"],
                     "forward_seconds": metrics["forward_seconds"],
                     "lens_seconds": metrics.get("lens_seconds", 0.0)})
    return {key: summary([r[key] for r in runs]) for key in runs[0]}


def measure_ihs_probe(ihs, spec, out, repeats, log, env):
    runs = []
    for _ in range(repeats):
        wall, peak = run_measured([ihs, "-q", "run", spec, "--only", "probe", "--force=probe"], log, env)
        runs.append({"process_seconds": wall, "peak_rss_mib": peak,
                     "stage_seconds": read_manifest(out / "probe")["duration_s"]})
    return {key: summary([r[key] for r in runs]) for key in runs[0]}


def measure_sklearn(out, work, repeats, log, env):
    command = [sys.executable, ROOT / "scripts" / "sklearn_probe.py", "accuracy",
               "--activations", out / "extract" / "activations",
               "--splits", out / "probe" / "splits.parquet",
               "--output", work / "sklearn.json", "--jobs", "1"]
    runs = [run_measured(command, log, env) for _ in range(repeats)]
    return {"process_seconds": summary([w for w, _ in runs]),
            "peak_rss_mib": summary([p for _, p in runs])}


def compare_accuracy(metrics_path, sklearn_path):
    """Per classifier: the largest and the mean |ihs - scikit-learn| test
    accuracy over layers and tasks, in points. Layer 0 is left out: the
    embedding of the last prompt token is the same for every prompt, so both
    sides can only predict one class there, and which one is arbitrary."""
    import pyarrow.parquet as pq
    ours = pq.read_table(metrics_path, columns=["task", "classifier", "layer", "split", "accuracy"]).to_pylist()
    theirs = json.loads(sklearn_path.read_text())
    layers = theirs["layers"]
    result = {}
    for classifier in CLASSIFIERS:
        gaps = []
        for row in ours:
            if (row["classifier"] != classifier or row["split"] not in ("test", "transfer")
                    or row["layer"] == 0):
                continue
            by_split = theirs["accuracy"].get(row["task"], {}).get(classifier, {})
            if row["split"] not in by_split:
                continue
            reference = by_split[row["split"]][layers.index(row["layer"])]
            gaps.append(100 * abs(row["accuracy"] - reference))
        if gaps:
            result[classifier] = {"max_points": max(gaps), "mean_points": statistics.mean(gaps),
                                  "units": len(gaps)}
    return result


def scale_row(scale, extract, probe, lengths):
    forward = extract["forward_seconds"]["median"]
    return {"scale": scale, "prompts": len(lengths), "tokens": sum(lengths),
            "extract_forward_seconds": extract["forward_seconds"],
            "extract_prompts_per_s": len(lengths) / forward,
            "extract_peak_rss_mib": extract["peak_rss_mib"],
            "probe_seconds": probe["stage_seconds"],
            "probe_peak_rss_mib": probe["peak_rss_mib"]}


# ---------------------------------------------------------------- HF worker


def command_hf_worker(args):
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    table = pq.read_table(args.tokens, columns=["prompt_id", "input_ids"]).to_pylist()
    prompt_ids = [row["prompt_id"] for row in table]
    sequences = [list(row["input_ids"]) for row in table]

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(MODEL.parent, gguf_file=MODEL.name, dtype=dtype)
    model = model.to(device).eval()
    sync()
    load_seconds = time.perf_counter() - started
    config = model.config

    method = reference_method if args.method == "reference" else batched_method
    seconds = []
    for _ in range(args.repeats):
        sync()
        started = time.perf_counter()
        states = method(model, sequences, args.batch_size, device)
        sync()
        seconds.append(time.perf_counter() - started)

    # Features against ihs's, layer by layer. HF's last hidden state has the
    # final norm applied and ihs's does not, so that norm is applied to ihs's.
    ours = read_activations(args.activations, prompt_ids, config.num_hidden_layers + 1)
    with torch.inference_mode():
        ours[-1] = model.model.norm(torch.from_numpy(ours[-1]).to(device, dtype)).float().cpu().numpy()
    differences = [float(np.max(np.abs(theirs - mine))) for theirs, mine in zip(states, ours)]
    scale = [float(np.max(np.abs(theirs))) for theirs in states]

    result = {
        "method": args.method,
        "load_seconds": load_seconds,
        "seconds": summary(seconds),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {key: getattr(config, key) for key in (
            "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "num_hidden_layers", "vocab_size")} | {"head_dim": getattr(config, "head_dim", None)},
        "max_abs_difference": max(differences),
        "max_abs_difference_by_layer": differences,
        "max_abs_state": max(scale),
    }
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    args.output.write_text(json.dumps(result, indent=2) + "\n")


def reference_method(model, sequences, batch_size, device):
    """One prompt per forward pass with output_hidden_states=True, as the
    reference method of Zhou et al. 2024 does; every layer's last-token state to numpy and its logit
    lens top 5."""
    import numpy as np
    import torch

    layers = model.config.num_hidden_layers + 1
    states = [[] for _ in range(layers)]
    lens = []
    with torch.no_grad():
        for sequence in sequences:
            ids = torch.tensor([sequence], device=device)
            output = model(input_ids=ids, output_hidden_states=True)
            per_layer = []
            for layer, hidden in enumerate(output.hidden_states):
                last = hidden[0, -1]
                states[layer].append(last.float().cpu().numpy())
                # The last entry already has the final norm applied.
                normed = last if layer == layers - 1 else model.model.norm(last)
                top = torch.topk(model.lm_head(normed), LENS_TOP_K)
                per_layer.append((top.indices.cpu().numpy(), top.values.float().cpu().numpy()))
            lens.append(per_layer)
    return [np.stack(layer) for layer in states]


def batched_method(model, sequences, batch_size, device):
    """The batches ihs runs (sorted by length, longest first), left padding
    with an attention mask, position ids counted from the first real token,
    the base model without lm_head, last-token states only."""
    import numpy as np
    import torch

    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    layers = model.config.num_hidden_layers + 1
    states = [np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32) for _ in range(layers)]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(sequences[i])
                ids[row, width - n:] = torch.tensor(sequences[i])
                mask[row, width - n:] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            output = model.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 position_ids=positions.to(device), output_hidden_states=True,
                                 use_cache=False)
            for layer, hidden in enumerate(output.hidden_states):
                states[layer][batch] = hidden[:, -1].float().cpu().numpy()
    return states


def read_activations(folder, prompt_ids, layers):
    """ihs's stored states, one [prompts, hidden] array per layer, in the
    order of prompt_ids."""
    import numpy as np
    import pyarrow.parquet as pq

    result = []
    for layer in range(layers):
        table = pq.read_table(folder / f"layer={layer:03d}", columns=["prompt_id", "hidden"])
        hidden = table.column("hidden").combine_chunks()
        matrix = hidden.flatten().to_numpy().reshape(len(table), -1)
        row_of = {pid: i for i, pid in enumerate(table.column("prompt_id").to_pylist())}
        result.append(np.ascontiguousarray(matrix[[row_of[pid] for pid in prompt_ids]]))
    return result


# ---------------------------------------------------------------- the page


def fmt(figure, digits=2, unit=""):
    """'median (min to max)' of a summary."""
    return (f"{figure['median']:.{digits}f}{unit} ({figure['min']:.{digits}f} to "
            f"{figure['max']:.{digits}f})")


def peak(figure):
    """The median of a peak-memory summary, or a dash where none was kept."""
    return "-" if figure is None else f"{figure['median']:.0f}"


def render_page(all_figures):
    lines = [
        "# Benchmarks",
        "",
        "`just bench` (quick) or `just bench --size full` measures ihs against HF transformers and",
        "scikit-learn on the embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantized) and",
        "the bundled prompts, and rewrites this page and `benchmarks.json` (every run's raw",
        "figures). `just bench --device cuda` adds a CUDA section in bf16.",
        "Every comparison is a ratio of figures measured in the same invocation, with the",
        "same prompts, torch version, dtype and thread count. Times are the median of",
        "several runs, with the fastest and slowest in parentheses.",
        "",
        "How each side is timed:",
        "",
        "- **ihs extract**: the extract stage of `ihs run --only extract --force=extract`;",
        "  its manifest splits the stage into loading the model, the forward passes (with",
        "  the states' copy to host memory and the finite check) and the logit lens.",
        "- **HF reference**: the method of Zhou et al. 2024 (arXiv:2406.05644), one prompt per forward pass of",
        "  `AutoModelForCausalLM` with `output_hidden_states=True` under `torch.no_grad()`,",
        "  every layer's last-token state copied to numpy and read through the logit lens",
        f"  (final norm and lm_head, top {LENS_TOP_K}). Compared with ihs's extract stage",
        f"  recording the logit lens top {LENS_TOP_K} (forward passes plus lens).",
        "- **HF batched**: the base model (no lm_head) over the same length-sorted batches",
        f"  as ihs ({BATCH_SIZE} prompts), left padding with an attention mask and position ids",
        "  counted from the first real token, `use_cache=False`, `torch.inference_mode()`,",
        "  last-token states only. Compared with ihs's forward passes.",
        "- **Roofline**: the decoder's matmul FLOPs for the prompts' tokens (q, k, v, o and",
        "  MLP projections, and QK^T and AV over the causal pairs; no lm_head) divided by",
        "  the GFLOP/s `ihs roofline` measures on a large matmul in the same run.",
        "- **Probes**: the probe stage (`ihs run --only probe --force=probe`: 3 tasks, SVM,",
        "  MLP and logistic regression at every layer, in parallel with rayon) against",
        "  `scripts/sklearn_probe.py accuracy --jobs 1`, which trains scikit-learn's",
        "  `SVC(kernel=\"linear\")`, `MLPClassifier` and `LogisticRegression` one after the",
        "  other on the same features and splits. Both include reading the features.",
        "- **Cached rerun**: `ihs run` of a spec with every stage when all nodes are cached",
        "  (the process's wall time, manifests and checksums verified).",
        "- **Peak memory**: the peak resident set of the process, from `wait4`.",
        "",
    ]
    for device in ("cpu", "cuda"):
        if device in all_figures:
            lines += render_device(all_figures[device])
    return "\n".join(lines).rstrip() + "\n"


def render_device(f):
    prompts, tokens = f["prompts"], f["tokens"]
    ihs = f["ihs_extract"]
    ihs_lens = f["ihs_extract_lens"]
    batched = f["hf_batched"]
    reference = f["hf_reference"]
    roofline = f["roofline"]

    forward = ihs["forward_seconds"]["median"]
    with_lens = ihs_lens["forward_seconds"]["median"] + ihs_lens["lens_seconds"]["median"]
    achieved = f["decoder_gflop"] / forward
    rate = lambda seconds: f"{prompts / seconds:.1f} | {tokens / seconds:.0f}"
    lines = [
        f"## {f['device'].upper()} ({f['dtype']}), {f['size']} size",
        "",
        f"{f['machine']}; {f['threads']} threads; torch {f['versions']['torch']}, "
        f"transformers {f['versions']['transformers']}, scikit-learn "
        f"{f['versions']['scikit-learn']}, ihs {f['versions']['ihs']}; {f['date']}; "
        f"{f['repeats']} runs per figure; the whole benchmark took {f['bench_seconds'] / 60:.1f} min.",
        "",
        f"### Extraction: {prompts} prompts, {tokens} tokens, every layer's last-token state",
        "",
        "| method | seconds | prompts/s | tokens/s | peak RSS (MiB) | ihs speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| ihs forward passes | {fmt(ihs['forward_seconds'])} | {rate(forward)} | "
        f"{ihs['peak_rss_mib']['median']:.0f} | |",
        f"| HF batched | {fmt(batched['seconds'])} | {rate(batched['seconds']['median'])} | "
        f"{batched['peak_rss_mib']:.0f} | {batched['seconds']['median'] / forward:.2f}x |",
        f"| ihs forward passes + lens top {LENS_TOP_K} | {with_lens:.2f} | {rate(with_lens)} | "
        f"{ihs_lens['peak_rss_mib']['median']:.0f} | |",
        f"| HF reference (per prompt, lens top {LENS_TOP_K}) | {fmt(reference['seconds'])} | "
        f"{rate(reference['seconds']['median'])} | {reference['peak_rss_mib']:.0f} | "
        f"{reference['seconds']['median'] / with_lens:.2f}x |",
        "",
        f"- Roofline: a {roofline['size']}x{roofline['size']} {roofline['dtype']} matmul through "
        f"tch runs at {roofline['gflops_median']:.1f} GFLOP/s ({roofline['gflops_min']:.1f} to "
        f"{roofline['gflops_max']:.1f}). The forward passes do {f['decoder_gflop']:.1f} GFLOP of "
        f"decoder matmuls, {achieved:.1f} GFLOP/s: **{100 * achieved / roofline['gflops_median']:.0f}% "
        "of the roofline**.",
        f"- The whole extract stage (process start, model load {ihs['load_seconds']['median']:.2f} s, "
        f"forward passes, Parquet shards, manifest) took {fmt(ihs['process_seconds'])} s; "
        f"HF transformers loaded the same GGUF file in {batched['load_seconds']:.2f} s.",
        f"- Features agree: the largest absolute difference between ihs's states and HF's is "
        f"{batched['max_abs_difference']:.2e} (batched) and {reference['max_abs_difference']:.2e} "
        f"(reference) over all {len(batched['max_abs_difference_by_layer'])} layers, for states "
        f"up to {batched['max_abs_state']:.0f} in absolute value.",
        f"- Peak memory against the model: the f32 weights are {f['model_f32_mib']:.0f} MiB; "
        f"ihs's extraction peaked at {ihs['peak_rss_mib']['median']:.0f} MiB, "
        f"{ihs['peak_rss_mib']['median'] - f['model_f32_mib']:.0f} MiB above them.",
        "",
        "### Probes: every layer, three tasks, SVM, MLP and logistic regression",
        "",
    ]
    probe = f["ihs_probe"]
    sklearn = f["sklearn_probe"]
    ratio = sklearn["process_seconds"]["median"] / probe["process_seconds"]["median"]
    lines += [
        "| method | seconds | peak RSS (MiB) |",
        "| --- | --- | --- |",
        f"| ihs probe stage (process) | {fmt(probe['process_seconds'])} | "
        f"{peak(probe['peak_rss_mib'])} |",
        f"| scikit-learn, serial | {fmt(sklearn['process_seconds'])} | "
        f"{peak(sklearn['peak_rss_mib'])} |",
        "",
        f"ihs takes **{1 / ratio:.2f}x** scikit-learn's wall time ({ratio:.2f}x faster).",
        "Test accuracy, ihs against scikit-learn, over every layer but 0 and every task",
        "(points; on the quick size each test prompt is several points):",
        "",
        "| classifier | largest difference | mean difference | units |",
        "| --- | --- | --- | --- |",
    ]
    for classifier, gap in f["probe_accuracy"].items():
        lines.append(f"| {classifier} | {gap['max_points']:.1f} | {gap['mean_points']:.2f} | {gap['units']} |")
    lines += [
        "",
        "### Cached rerun",
        "",
        f"`ihs run` with every stage cached: {fmt(f['cached_rerun_seconds'], 3)} s.",
        "",
        "### Scaling with the prompt count (each prompt repeated)",
        "",
        f"The 1x row is the extraction above; the other rows are {f['scale_repeats']} run(s) each.",
        "A scale repeats every prompt, so its decoder FLOPs are the scale times those of 1x.",
        "Repeated prompts fill the length-sorted batches with prompts of equal length, so the",
        "larger scales spend less of the forward passes on padding, which the roofline column",
        "(the fraction of the roofline above) shows.",
        "",
        "| scale | prompts | tokens | extract forward s | prompts/s | roofline | "
        "extract peak RSS (MiB) | probe s | probe peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in f["scaling"]:
        gflops = f["decoder_gflop"] * row["scale"] / row["extract_forward_seconds"]["median"]
        lines.append(
            f"| {row['scale']}x | {row['prompts']} | {row['tokens']} | "
            f"{fmt(row['extract_forward_seconds'])} | {row['extract_prompts_per_s']:.1f} | "
            f"{100 * gflops / f['roofline']['gflops_median']:.0f}% | "
            f"{row['extract_peak_rss_mib']['median']:.0f} | {fmt(row['probe_seconds'])} | "
            f"{peak(row['probe_peak_rss_mib'])} |")
    lines.append("")
    return lines


def command_render(args):
    args.page.write_text(render_page(json.loads(args.figures.read_text())))


def main():
    args = parse_args()
    {"run": command_run, "hf-worker": command_hf_worker, "render": command_render}[args.command](args)


if __name__ == "__main__":
    main()
