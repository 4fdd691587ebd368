"""The README's demo: the notes' model trained the notes' way, then the fastcustom way.

Both train the notes' regressor (8 inputs -> 30 selu -> 30 selu -> 1, Huber loss and
metric with threshold 2, Nadam) from the same initial weights on the same generated
data for the same epochs: first with the notes' own classes (fastcustom.baselines.notes)
and `model.fit`, then with fastcustom's classes and fastcustom's compiled loop. It
prints a table of wall-clock time, steps/s and final loss for each and the speed-up,
then saves the fast model in `.keras` format and loads it back with plain
`keras.models.load_model` (no custom_objects).
"""

import os
import tempfile
import time
from dataclasses import dataclass, field

import keras
import numpy as np

import fastcustom
from fastcustom.baselines import notes

THRESHOLD = 2.0


def make_data(n=20_640, n_features=8, seed=0):
    """A smooth nonlinear regression problem the size of California housing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype("float32")
    w = rng.normal(size=(n_features,)).astype("float32")
    y = np.tanh(x @ w / 2.0) + 0.3 * np.sin(x[:, 0] * 2.0) + rng.normal(0, 0.1, n)
    return x, y.astype("float32")[:, None]


def notes_model(n_features=8, seed=0):
    """The notes' regressor from the notes' classes, compiled the notes' way."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((n_features,)),
                              notes.MyDense(30, activation="selu"),
                              notes.MyDense(30, activation="selu"),
                              notes.MyDense(1)])
    model.compile(optimizer="nadam", loss=notes.Huberloss(THRESHOLD),
                  metrics=[notes.HuberMetric(THRESHOLD)])
    return model


def fastcustom_model(initial_weights, n_features=8):
    """The same regressor from fastcustom's classes, starting from `initial_weights`."""
    model = keras.Sequential([keras.Input((n_features,)),
                              fastcustom.MyDense(30, activation="selu"),
                              fastcustom.MyDense(30, activation="selu"),
                              fastcustom.MyDense(1)])
    model.set_weights(initial_weights)
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(threshold=THRESHOLD),
                  metrics=[fastcustom.HuberMetric(threshold=THRESHOLD)])
    return model


class EpochClock(keras.callbacks.Callback):
    """Wall-clock seconds since training began and the loss, at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.start = time.perf_counter()
        self.seconds, self.losses = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.losses.append(float(logs["loss"]))


@dataclass
class Run:
    """One training run: what it was, its steps per epoch, and its clock."""

    name: str
    steps_per_epoch: int
    clock: EpochClock = field(repr=False)

    @property
    def seconds(self):
        """Wall-clock seconds of the whole run, tracing and compilation included."""
        return self.clock.seconds[-1]

    @property
    def first_epoch_seconds(self):
        return self.clock.seconds[0]

    @property
    def later_steps_per_second(self):
        """Steps per second after the first epoch (compiled, warm); None after one epoch."""
        later = len(self.clock.seconds) - 1
        if later == 0:
            return None
        return later * self.steps_per_epoch / (self.clock.seconds[-1] - self.clock.seconds[0])

    @property
    def final_loss(self):
        return self.clock.losses[-1]


def train_with_model_fit(model, x, y, epochs, batch_size):
    clock = EpochClock()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[clock])
    return clock


def train_with_fastcustom(model, x, y, epochs, batch_size):
    clock = EpochClock()
    fastcustom.accelerate(model)   # the one line; the same model.fit call as above
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[clock])
    return clock


def format_table(runs):
    """The runs as a plain-text table."""
    rows = [("training", "first epoch (s)", "later epochs (steps/s)", "total (s)", "final loss")]
    for run in runs:
        later = run.later_steps_per_second
        rows.append((run.name, f"{run.first_epoch_seconds:.2f}", "-" if later is None else f"{later:,.0f}",
                     f"{run.seconds:.2f}", f"{run.final_loss:.5f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_speedup(baseline, fast):
    """The speed-up of `fast` over `baseline`: in total, and per step once both are warm."""
    text = f"speed-up: {baseline.seconds / fast.seconds:.1f}x in total (tracing and compilation included)"
    if fast.later_steps_per_second is not None:
        text += (f", {fast.later_steps_per_second / baseline.later_steps_per_second:.0f}x per step "
                 "after the first epoch")
    return text


def plot_losses(runs, path):
    """A PNG at `path`: each run's loss per epoch against wall-clock seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        axes.plot(run.clock.seconds, run.clock.losses, marker="o", label=run.name)
    axes.set_xlabel("wall-clock time since the start of training (s)")
    axes.set_ylabel("training loss (Huber, threshold 2)")
    axes.set_title("The notes' model: model.fit vs fastcustom")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def check_save_and_load(model, x, path):
    """Saves `model` to `path`, loads it with plain `load_model`; returns (same predictions, loaded)."""
    model.save(path)
    loaded = keras.models.load_model(path)
    # the accelerated model predicts through XLA, the loaded one through TF's kernels:
    # the same weights give the same values to float32 rounding (~1e-7), not bit for bit
    same = np.allclose(model.predict(x[:256], verbose=0), loaded.predict(x[:256], verbose=0),
                       rtol=1e-5, atol=1e-6)
    return same, loaded


def main(epochs=3, batch_size=32, save=None, plot=None):
    """Runs the demo; `save`: where to keep the saved model (else a temporary folder, removed)."""
    x, y = make_data()
    steps_per_epoch = -(-len(x) // batch_size)
    print(f"fastcustom Huber path: {fastcustom.path_info()['path']}")
    print(f"The notes' model: {len(x):,} samples, batch {batch_size} ({steps_per_epoch} steps "
          f"per epoch), {epochs} epochs, the same initial weights")

    slow = notes_model()
    fast = fastcustom_model(slow.get_weights())
    runs = [Run("notes' classes + model.fit", steps_per_epoch,
                train_with_model_fit(slow, x, y, epochs, batch_size)),
            Run("fastcustom + accelerated model.fit", steps_per_epoch,
                train_with_fastcustom(fast, x, y, epochs, batch_size))]
    print()
    print(format_table(runs))
    print(format_speedup(*runs))

    if plot:
        plot_losses(runs, plot)
        print(f"loss curves: {plot}")

    with tempfile.TemporaryDirectory() as scratch:
        path = save or os.path.join(scratch, "demo_model.keras")
        same, loaded = check_save_and_load(fast, x, path)
        where = f"saved to {path}" if save else "saved and"
        print(f"{where} reloaded with plain keras.models.load_model: loss threshold "
              f"{loaded.loss.threshold}, same predictions: {same}")
    if not same:
        raise SystemExit("the reloaded model computes differently")
    return runs
