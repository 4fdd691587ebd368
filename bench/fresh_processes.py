"""What only fresh processes can compare, each pair run alternating, medians.

    python bench/fresh_processes.py [--pairs 3]

- **Threads**: an accelerated XLA loop's steps/s with TensorFlow's default intra-op pool
  and with `TF_NUM_INTRAOP_THREADS=1` (read once, when TensorFlow starts), on the notes'
  model (Dense 8-30-30-1, batch 32, Nadam, HuberLoss) and on the wide MLP (784-256-256-10,
  batch 256, Adam): the setting docs/training.md ("Small models and threads") leaves to
  the user.
- **First fit**: the wall time of the first `model.fit` (512 samples, one epoch: trace,
  compile and 16 steps) of the notes' model accelerated with `jit_compile=True` against
  `jit_compile=False`: what `fastcustom.training.modes` calls the compile's cost.

Prints one table row per comparison: both medians, their ratio and every pair's ratio.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {"notes": (8, [30, 30], 1, 32), "wide": (784, [256, 256], 10, 256)}


def child(what, model_name):
    """One measurement in this (fresh) process: steps/s, or the first fit's seconds."""
    import keras
    import numpy as np

    import fastcustom

    features, hidden, outputs, batch = MODELS[model_name]
    keras.utils.set_random_seed(0)
    activation = "selu" if model_name == "notes" else "relu"
    model = keras.Sequential([keras.Input((features,)),
                              *(keras.layers.Dense(h, activation) for h in hidden),
                              keras.layers.Dense(outputs)])
    if model_name == "notes":
        model.compile(keras.optimizers.Nadam(), fastcustom.HuberLoss())
    else:
        model.compile(keras.optimizers.Adam(),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    steps = 645 if model_name == "notes" else 40
    x = rng.normal(size=(steps * batch, features)).astype("float32")
    y = (np.tanh(x[:, :1]) if model_name == "notes"
         else rng.integers(0, outputs, len(x))).astype("float32")
    if what.startswith("first-fit"):
        fastcustom.accelerate(model, jit_compile=what == "first-fit-xla")
        start = time.perf_counter()
        model.fit(x[:512], y[:512], batch_size=batch, epochs=1, verbose=0)
        return time.perf_counter() - start
    fastcustom.accelerate(model, jit_compile=True)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(what, model_name, env=None):
    out = subprocess.run([sys.executable, __file__, "--child", what, model_name],
                         env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


COMPARISONS = [  # (row, unit, (label, what, model, env) for the first and the second way)
    ("notes' model, steps/s", "steps/s", ("1 thread", "steps", "notes", {"TF_NUM_INTRAOP_THREADS": "1"}),
     ("default threads", "steps", "notes", {})),
    ("wide MLP, steps/s", "steps/s", ("1 thread", "steps", "wide", {"TF_NUM_INTRAOP_THREADS": "1"}),
     ("default threads", "steps", "wide", {})),
    ("notes' model, first fit (s)", "s", ("XLA", "first-fit-xla", "notes", {}),
     ("graph", "first-fit-graph", "notes", {})),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    print("| comparison | first | second | first / second | each pair |")
    print("| --- | --- | --- | --- | --- |")
    for row, unit, first, second in COMPARISONS:
        pairs = [(measure(*first[1:]), measure(*second[1:])) for _ in range(args.pairs)]
        a = statistics.median(p[0] for p in pairs)
        b = statistics.median(p[1] for p in pairs)
        each = ", ".join(f"{p[0] / p[1]:.2f}" for p in pairs)
        shown = "{:,.0f}" if unit == "steps/s" else "{:.2f}"
        print(f"| {row} | {first[0]}: {shown.format(a)} {unit} "
              f"| {second[0]}: {shown.format(b)} {unit} "
              f"| {a / b:.2f} | {each} |", flush=True)


if __name__ == "__main__":
    main()
