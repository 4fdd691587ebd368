"""Profile training in TensorBoard: `fastcustom profile`, and `profile_fit` for your own model.

`profile_fit(model, x, y, logdir)` runs your `model.fit` with a
`keras.callbacks.TensorBoard(logdir, profile_batch=...)` window (and
`fastcustom.callbacks.StepMarkers` when the model is not accelerated, so that the
Overview page finds the steps), long enough to reach it, and returns the trace it
wrote. `fastcustom profile --logdir DIR` does that for the notes' model built from
fastcustom's classes, accelerated, and prints the summary;
`fastcustom profile --summarize DIR` summarizes any trace (the newest under DIR):
`fastcustom.trace_summary`. Needs `pip install tensorboard tensorboard-plugin-profile`
(which brings xprof).

>>> trace = profile_fit(model, x, y, "logs", first_step=5, steps=6)   # steps 5 to 10
>>> print(format_summary(summarize(trace)))
"""

import glob
import importlib.util
import math
import os

PROFILE_PACKAGES = {"tensorboard": "tensorboard",
                    "tensorboard_plugin_profile": "tensorboard-plugin-profile",
                    "xprof": "xprof"}


def missing_packages():
    """The pip names of the profiling packages that are not installed."""
    return [pip for module, pip in PROFILE_PACKAGES.items()
            if importlib.util.find_spec(module) is None]


def require_profile_packages():
    missing = missing_packages()
    if missing:
        raise RuntimeError(
            f"profiling needs {', '.join(missing)}: pip install {' '.join(missing)} "
            "(or pip install 'fastcustom[profile]')")


def _traces(logdir):
    return {path: os.path.getmtime(path)
            for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)}


def profile_fit(model, x, y, logdir, *, first_step=5, steps=6, batch_size=32, **fit_kwargs):
    """`model.fit(x, y, ...)` with TensorBoard profiling steps `first_step` ..
    `first_step + steps - 1` (numbered from 1, as Keras numbers batches), for as many
    epochs as it takes to get one step past them; returns the path of the new trace.

    The model must be compiled (and may be accelerated); `fit_kwargs` go to `fit`.
    """
    import keras

    from fastcustom.callbacks import StepMarkers
    from fastcustom.training.profiling import capture

    require_profile_packages()
    if first_step < 1 or steps < 1:
        raise ValueError(f"`first_step` and `steps` must be >= 1, got {first_step}, {steps}.")
    samples = len(x[0] if isinstance(x, (list, tuple)) else x)
    per_epoch = math.ceil(samples / batch_size)
    epochs = math.ceil((first_step + steps + 2) / per_epoch)
    last_step = first_step + steps - 1
    if "_fastcustom_accelerated" not in vars(model):
        # Keras's own fit: StepMarkers' last marker ends after the TensorBoard callback
        # stopped the profiler, and xprof leaves out the first and last step of a longer
        # capture, so the profile is asked for around the steps (the accelerated loop
        # does this itself)
        low, high = capture(first_step, last_step)
        first_step, last_step = max(low, 1), high + 1
    callbacks = [keras.callbacks.TensorBoard(logdir, profile_batch=(first_step, last_step)),
                 StepMarkers(), *fit_kwargs.pop("callbacks", [])]
    before = _traces(logdir)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks,
              **fit_kwargs)
    new = [path for path, mtime in _traces(logdir).items() if before.get(path) != mtime]
    if not new:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    return max(new, key=os.path.getmtime)


def build_model(jit_compile=True, accelerated=True, features=8, hidden=30, seed=0):
    """The notes' regressor from fastcustom's classes: MyDense(selu) x 2 -> MyDense(1),
    HuberLoss and HuberMetric (threshold 2), Nadam; accelerated unless asked not to, its
    loops XLA-compiled from the first call or plain graphs (`jit_compile`)."""
    import keras

    import fastcustom

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((features,)),
                              fastcustom.MyDense(hidden, activation="selu"),
                              fastcustom.MyDense(hidden, activation="selu"),
                              fastcustom.MyDense(1)])
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss(2.0),
                  metrics=[fastcustom.HuberMetric(2.0)])
    if accelerated:
        fastcustom.accelerate(model, jit_compile=bool(jit_compile))
    return model


def run(logdir, steps=10, batch_size=32, jit_compile=True, accelerated=True, top=10):
    """The `profile` command: profile the notes' model, say where the trace is and how to
    open it, and summarize it."""
    import numpy as np

    from fastcustom.trace_summary import format_summary, summarize

    require_profile_packages()
    model = build_model(jit_compile=jit_compile, accelerated=accelerated)
    first_step = 5
    samples = batch_size * (first_step + steps + 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 8)).astype("float32")
    y = np.tanh(x[:, :1] + 0.5 * x[:, 1:2]).astype("float32")
    trace = profile_fit(model, x, y, logdir, first_step=first_step, steps=steps,
                        batch_size=batch_size, shuffle=False)
    how = (("accelerated model.fit, XLA" if jit_compile else "accelerated model.fit, a graph")
           if accelerated else "Keras's own model.fit, with StepMarkers")
    print(f"Profiled training steps {first_step} to {first_step + steps - 1} of the notes' "
          f"model (MyDense x 3, HuberLoss, HuberMetric), {how}.")
    print(f"Open it: tensorboard --logdir {logdir}   (then the Profile tab)")
    print()
    print(format_summary(summarize(trace, top=top)))
    return trace


def summarize_command(path, top=10):
    """`fastcustom profile --summarize PATH`: the summary of the newest trace under PATH."""
    from fastcustom.trace_summary import format_summary, summarize

    require_profile_packages()
    print(format_summary(summarize(path, top=top)))
