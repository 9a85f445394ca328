#!/usr/bin/env python
"""Benchmark splitnet against the alternatives a user would pick instead.

For a stack of Dense layers it times one training step (AdamW with weight
decay, mean squared error, the same data) of

    (a) unsplit: every entry trainable,
    (b) mask:    the gradient-mask recipe (gradients multiplied by a 0/1
                 mask; frozen entries still decay under weight decay),
    (c) split:   splitnet's split model,

interleaved a-b-c over repeated rounds after a warm-up, and reports medians,
the ratios b/a and c/a, the optimizer state of each and whether (b) kept its
frozen entries exact. It also times `merge_model` and `export_saved_model` on
a model of about `--merge-params` parameters, with their peak extra memory,
and the predict time of the merged model against the unsplit one.

Usage:
    python scripts/bench.py                      # the README's table
    python scripts/bench.py --json bench.json    # also write the figures
    python scripts/bench.py --quick              # tiny sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import splitnet  # noqa: E402

# (name, width, depth, batch, frozen fraction, how the frozen set is chosen)
SCENARIOS = [
    ("2048 wide, 50% random units", 2048, 2, 256, 0.5, "random"),
    ("2048 wide, 90% random units", 2048, 2, 256, 0.9, "random"),
    ("2048 wide, 50% contiguous units", 2048, 2, 256, 0.5, "contiguous"),
    ("2048 wide, 50% random rows", 2048, 2, 256, 0.5, "rows"),
    ("256 wide, batch 32, 50% random units", 256, 2, 32, 0.5, "random"),
]
QUICK = [("32 wide, 50% random units", 32, 2, 8, 0.5, "random"), ("32 wide, 50% rows", 32, 2, 8, 0.5, "rows")]


def make_stack(width, depth, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,), name="x")
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
    return keras.Model(inputs, h, name=f"stack{width}x{depth}")


def freeze_spec(width, depth, fraction, how, seed=0):
    """The same frozen sets for every variant: a `freeze` mapping for splitnet."""
    rng = np.random.default_rng(seed)
    count = int(round(fraction * width))
    freeze = {}
    for i in range(depth):
        if how == "contiguous":
            freeze[f"dense_{i}"] = {"units": f"0:{count}"}
        else:
            chosen = sorted(int(j) for j in rng.choice(width, size=count, replace=False))
            freeze[f"dense_{i}"] = {"units" if how == "random" else "rows": chosen}
    return freeze


def optimizer():
    return keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01)


def optimizer_bytes(opt):
    # Per-entry slots only: the iteration count and the learning rate are scalars.
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in opt.variables if len(v.shape))


def train_step(model, opt, masks=None):
    """One compiled step; with `masks`, gradients are multiplied by (1 - frozen)."""
    variables = model.trainable_variables
    opt.build(variables)
    keep = None
    if masks is not None:
        keep = [tf.constant(1.0 - m.astype("float32")) for m in masks]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, variables)
        if keep is not None:
            grads = [g * k for g, k in zip(grads, keep)]
        opt.apply_gradients(zip(grads, variables))
        return loss

    return step


def mask_list(model, masks):
    """Frozen masks aligned with `model.trainable_variables` (kernel, bias per Dense)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            m = masks.get(layer.name)
            out.append(m["kernel"] if m else np.zeros(layer.kernel.shape, bool))
            out.append(m["bias"] if m else np.zeros(layer.bias.shape, bool))
    return out


def time_steps(scenario, rounds, steps):
    name, width, depth, batch, fraction, how = scenario
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    base = make_stack(width, depth)
    freeze = freeze_spec(width, depth, fraction, how)
    split = splitnet.split_model(base, freeze)
    masks = splitnet.frozen_masks(split)

    unsplit = keras.models.clone_model(base)
    unsplit.set_weights(base.get_weights())
    masked = keras.models.clone_model(base)
    masked.set_weights(base.get_weights())
    opts = {"unsplit": optimizer(), "mask": optimizer(), "split": optimizer()}
    variants = {
        "unsplit": train_step(unsplit, opts["unsplit"]),
        "mask": train_step(masked, opts["mask"], mask_list(masked, masks)),
        "split": train_step(split, opts["split"]),
    }
    for step in variants.values():  # warm-up: tracing and first allocations
        for _ in range(3):
            step(x, y).numpy()
    times = {key: [] for key in variants}
    for _ in range(rounds):
        for key, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = step(x, y)
            loss.numpy()
            times[key].append((time.perf_counter() - start) / steps)
    medians = {key: statistics.median(values) for key, values in times.items()}

    # Did the mask recipe keep its frozen entries? (Not under weight decay.)
    before = splitnet.merged_weights(base)
    def drift(weights):
        return sum(
            int((weights[k][0] != before[k][0])[m["kernel"]].sum()) + int((weights[k][1] != before[k][1])[m["bias"]].sum())
            for k, m in masks.items()
        )

    mask_drift, split_drift = drift(splitnet.merged_weights(masked)), drift(splitnet.merged_weights(split))
    frozen = sum(int(m["kernel"].sum() + m["bias"].sum()) for m in masks.values())
    return {
        "scenario": name,
        "width": width,
        "depth": depth,
        "batch": batch,
        "frozen_fraction": fraction,
        "frozen_set": how,
        "frozen_entries": frozen,
        "step_ms": {key: 1e3 * value for key, value in medians.items()},
        "mask_over_unsplit": medians["mask"] / medians["unsplit"],
        "split_over_unsplit": medians["split"] / medians["unsplit"],
        "optimizer_bytes": {key: optimizer_bytes(opt) for key, opt in opts.items()},
        "mask_frozen_changed": mask_drift,
        "split_frozen_changed": split_drift,
    }


class PeakRSS:
    """Samples this process's resident memory in a thread; `extra` is the peak above the start."""

    def __init__(self, interval=0.002):
        self.interval = interval

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra = self.peak - self.start


def time_merge_export(params, repeats):
    depth = 4
    width = int(round((params / depth) ** 0.5))
    base = make_stack(width, depth)
    split = splitnet.split_model(base, freeze_spec(width, depth, 0.5, "random"))
    param_bytes = 4 * base.count_params()
    with PeakRSS() as memory:
        start = time.perf_counter()
        merged = splitnet.merge_model(split)
        merge_s = time.perf_counter() - start
    merge_extra = memory.extra
    with tempfile.TemporaryDirectory() as folder, PeakRSS() as memory:
        start = time.perf_counter()
        splitnet.export_saved_model(split, os.path.join(folder, "export"))
        export_s = time.perf_counter() - start
    export_extra = memory.extra

    x = tf.constant(np.random.default_rng(0).normal(size=(256, width)).astype("float32"))
    predict = {key: tf.function(lambda t, m=m: m(t, training=False)) for key, m in (("unsplit", base), ("merged", merged))}
    for fn in predict.values():
        fn(x).numpy()
    times = {key: [] for key in predict}
    for _ in range(repeats):
        for key, fn in predict.items():
            start = time.perf_counter()
            fn(x).numpy()
            times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(v) for key, v in times.items()}
    return {
        "params": int(base.count_params()),
        "param_bytes": param_bytes,
        "merge_s": merge_s,
        "merge_peak_extra_bytes": merge_extra,
        "merge_peak_extra_over_params": merge_extra / param_bytes,
        "export_s": export_s,
        "export_peak_extra_bytes": export_extra,
        "predict_ms": {key: 1e3 * v for key, v in medians.items()},
        "merged_over_unsplit_predict": medians["merged"] / medians["unsplit"],
    }


def markdown(results, merge):
    lines = [
        "| scenario | unsplit ms | mask ms | split ms | mask/unsplit | split/unsplit | optimizer MB unsplit / mask / split | mask frozen changed | split frozen changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms, ob = r["step_ms"], r["optimizer_bytes"]
        lines.append(
            f"| {r['scenario']} | {ms['unsplit']:.2f} | {ms['mask']:.2f} | {ms['split']:.2f} | "
            f"{r['mask_over_unsplit']:.2f} | {r['split_over_unsplit']:.2f} | "
            f"{ob['unsplit'] / 2**20:.1f} / {ob['mask'] / 2**20:.1f} / {ob['split'] / 2**20:.1f} | "
            f"{r['mask_frozen_changed']:,} of {r['frozen_entries']:,} | {r['split_frozen_changed']} |"
        )
    if merge:
        lines += [
            "",
            f"| {merge['params'] / 1e6:.0f}M-parameter model | seconds | peak extra memory |",
            "|---|---|---|",
            f"| merge_model | {merge['merge_s']:.2f} | {merge['merge_peak_extra_bytes'] / 2**20:,.0f} MiB "
            f"({merge['merge_peak_extra_over_params']:.2f}x the parameter bytes) |",
            f"| export_saved_model (merge, export, reload, compare) | {merge['export_s']:.2f} | "
            f"{merge['export_peak_extra_bytes'] / 2**20:,.0f} MiB |",
            "",
            f"Predict, batch 256: merged {merge['predict_ms']['merged']:.2f} ms, unsplit "
            f"{merge['predict_ms']['unsplit']:.2f} ms, ratio {merge['merged_over_unsplit_predict']:.2f}.",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved a-b-c rounds (default 15)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed per variant per round (default 5)")
    parser.add_argument("--merge-params", type=float, default=100e6, help="parameters of the merge/export model; 0 skips")
    parser.add_argument("--only", help="run only scenarios whose name contains this text")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    scenarios = QUICK if args.quick else SCENARIOS
    if args.only:
        scenarios = [s for s in scenarios if args.only in s[0]]
    merge_params = 20_000 if args.quick else args.merge_params
    results = [time_steps(s, args.rounds, args.steps) for s in scenarios]
    merge = time_merge_export(merge_params, repeats=args.rounds) if merge_params else None
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; medians of {args.rounds} rounds")
    print(markdown(results, merge))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": results, "merge": merge, "tensorflow": tf.__version__, "keras": keras.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
