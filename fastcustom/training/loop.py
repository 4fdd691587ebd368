"""The compiled loops: many of the model's own `train_step` / `test_step` / `predict_step`
per call.

`CompiledLoops.run(kind, call)` runs one `fastcustom.training.sources.Call`: steps
`start .. stop - 1` of its window (`fastcustom.training.windows`), then its tail, in a
`tf.while_loop` where step `i` reads `window.batch(i)`; train and test return what
Keras's loop returns after the same steps: the model's metric results
(`model.get_metrics_result()`), or, for a model that overrides `train_step`, `test_step`
or `compute_metrics`, the outputs of its last step; predict returns the outputs of its
steps, concatenated.

The step is the model's, so everything `model.compile` set up takes part: the
compiled loss (per output, `loss_weights`), compiled metrics and
`weighted_metrics`, `model.losses`, the loss-scale optimizer under mixed
precision, and any override of the steps.

Under XLA each step also checks the indices its gathers and sparse losses read
(`fastcustom.training.checks`): XLA does not, TensorFlow's kernels do. The loop stops
at the first failing step and `run` raises TensorFlow's error.

For small steps (trainable parameters x batch size <= `SMALL_STEP`) in a fit of at least
`UNROLL_AFTER_STEPS` steps an iteration runs two steps: XLA:CPU starts each iteration's
kernels anew, a fixed cost per step, while the second copy of the step costs about as
much compile time again as the first, repaid only over that many steps. Each fit
decides (`plan`); the odd step runs after the loop (inline when the count is known when
tracing, as for a whole epoch; else in a second loop).

Compilation: with `jit_compile="auto"` the loops are compiled with XLA when Keras says
the model supports it (every layer, no op determinism) and one replica runs; if XLA
cannot compile them ("Detected unsupported operations": a custom op without an XLA
kernel) they fall back, once and with a warning, to a plain TF graph. No other error
changes how later calls compile. Under a strategy with several replicas the loop stays
in cross-replica context and runs each step with `strategy.run` on per-replica slices of
the batch (the way Keras runs `steps_per_execution`), as a plain graph. Each trace is a
`tf.function` of its own, traced once for its argument signature (`_signature`) and
called directly: no per-call argument matching, no retracing warnings.

With `FASTCUSTOM_XLA_CACHE=1` compiled loops are kept on disk across processes by
TensorFlow's persistent XLA cache (`fastcustom/xla_cache.py`).
"""

import math
import warnings

import numpy as np
import tensorflow as tf

from fastcustom.training import checks, keras_internals
from fastcustom.training.modes import Mode
from fastcustom.training.sources import Call
from fastcustom.training.windows import Stacked, as_keras_batch, batch_spec, first_tensor

# Two steps per loop iteration when trainable parameters x batch size is at most this,
# in a fit of at least this many steps.
SMALL_STEP = 1 << 20
UNROLL_AFTER_STEPS = 300_000

# What XLA says when it cannot compile a function (at its first call): a model property.
_CANNOT_COMPILE = ("unsupported operations", "XLA compilation", "not compilable",
                   "could not be lowered")


def _signature(value):
    """What decides the trace of a loop for the arguments `value`, hashable.

    As `tf.function` reads them: the containers (type, dict keys, length),
    each tensor's shape and dtype, any other leaf (None, a Python int) as is.
    """
    if isinstance(value, tf.Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return type(value), tuple((key, _signature(value[key]))
                                  for key in sorted(value, key=str))
    if isinstance(value, tf.distribute.DistributedValues):
        return type(value), _signature(tuple(value.values))
    return value


def _batch_rows(window):
    """Rows per batch of a window (per replica under several replicas)."""
    if hasattr(window, "batch_size"):
        return window.batch_size
    return 0 if window.batches is None else int(first_tensor(window.batches).shape[1])


def _xla_says_it_cannot_compile(error):
    return any(phrase in str(error) for phrase in _CANNOT_COMPILE)


class CompiledLoops:
    """The compiled train, test and predict loops of one model.

    `run("train" | "test", call)` returns the logs as scalar tensors; `run("predict",
    call)` the outputs of the call's batches, concatenated. `compiled_with` says "xla"
    or "graph".
    """

    def __init__(self, model, jit_compile="auto"):
        if jit_compile not in ("auto", True, False):
            raise ValueError(f"`jit_compile` must be 'auto', True or False, got {jit_compile!r}.")
        self.model = model
        self.strategy = model.distribute_strategy
        self.replicas = self.strategy.num_replicas_in_sync
        if jit_compile is True and self.replicas > 1:
            raise ValueError("jit_compile=True is not supported under a strategy with "
                             f"{self.replicas} replicas: XLA cannot compile the loop across "
                             "devices. Use jit_compile='auto' (a plain graph there).")
        xla_allowed = jit_compile is True or (
            jit_compile == "auto" and self.replicas == 1 and _keras_would_allow_xla(model))
        # graph or XLA, per kind of loop, from what each costs (`modes`)
        self._modes = {kind: Mode(jit_compile, xla_allowed)
                       for kind in ("train", "test", "predict")}
        self._xla = jit_compile is True    # the form of the call being traced or run
        self._may_fall_back = jit_compile == "auto"
        self._ran = []                     # the forms this fit's training calls took
        self._steps_log_metrics = {
            "train": not keras_internals.overrides(model, "train_step", "compute_metrics"),
            "test": not keras_internals.overrides(model, "test_step", "compute_metrics")}
        self._unroll = False   # two steps per iteration in this fit: `plan` decides
        self._steps = {}       # (kind, XLA or not) -> the step as a tf.function of its own
        self._prechecks = _Prechecks(self)
        self._traces = {}      # (kind, XLA or not, steps per iteration, signature) -> trace

    @property
    def compiled_with(self):
        """What this fit's training ran: "graph", "xla", or "graph, then xla" (and so on)."""
        forms = [form for n, form in enumerate(self._ran) if n == 0 or self._ran[n - 1] != form]
        return ", then ".join(forms) or ("xla" if self._modes["train"].xla else "graph")

    def plan(self, steps):
        """A fit's step count (None when unknown), before it runs: whether XLA can repay
        its compile (`modes`), and small steps under XLA run two per iteration in fits of
        at least `UNROLL_AFTER_STEPS`."""
        self._unroll = steps is not None and steps >= UNROLL_AFTER_STEPS
        self._modes["train"].plan(steps)
        self._ran = []

    def steps_per_iteration(self, batch_size):
        """2 for a small step under XLA on one replica in a long fit (`plan`), else 1."""
        if not (self._xla and self.replicas == 1 and self._unroll):
            return 1
        parameters = sum(math.prod(v.shape) for v in self.model.trainable_variables)
        return 2 if parameters * batch_size <= SMALL_STEP else 1

    # -- one step, in cross-replica context ----------------------------------------------
    def _step(self, kind):
        """The model's `kind` step as a function of its own, traced once however often the
        loop calls it (unrolled, the odd step, the tail); XLA inlines the calls. Under
        XLA it returns (outputs, checks report). Not a tf.function under several
        replicas: `strategy.run` of a nested tf.function can't all-reduce (merge_call)."""
        key = (kind, self._xla)
        if key not in self._steps:
            step = getattr(self.model, f"{kind}_step")
            if self.replicas > 1:
                self._steps[key] = step
            elif self._xla:
                self._steps[key] = tf.function(checks.with_checks(step), autograph=False)
            else:
                self._steps[key] = tf.function(step, autograph=False)
        return self._steps[key]

    def _run(self, kind, window, index=None, tail=None, reduction="auto"):
        """One step on batch `index` of `window` (or on `tail`): (outputs, report).

        `reduction=None`: outputs not reduced across replicas (nobody reads them).
        Several workers, "auto": the mean across replicas of each output (Keras's
        `reduce_per_replica` there means scalars over an axis 0 they lack, keras#20585).
        """
        step = self._step(kind)
        if self.replicas == 1:
            batch = window.tail_batch(tail) if index is None else window.batch(index)
            if self._xla:
                return step(batch)
            return step(batch), checks.ok_report()
        data = tail if index is None else window.batches
        take = as_keras_batch if index is None else (lambda b: Stacked(b).batch(index))
        outputs = self.strategy.run(lambda b: step(take(b)), args=(data,))
        if reduction is not None:
            if reduction == "auto" and keras_internals.multi_worker(self.strategy):
                outputs = tf.nest.map_structure(
                    lambda v: self.strategy.reduce("MEAN", v, axis=None), outputs)
            else:
                outputs = keras_internals.reduce_per_replica(outputs, self.strategy, reduction)
        return outputs, checks.ok_report()

    # -- the loops -------------------------------------------------------------------------
    def _steps_of(self, kind, window, start, stop, tail):
        """Steps start..stop-1 of `window`, then `tail`: (the last step's outputs when the
        model's own logs are those, report, the index of the step that failed)."""
        keep_last = not self._steps_log_metrics[kind]
        report, failed_at = checks.ok_report(), tf.constant(-1)
        last_outputs = None

        def note(step_report, index, report, failed_at):
            fresh = tf.equal(report[0], 0) & tf.not_equal(step_report[0], 0)
            return tf.where(fresh, step_report, report), tf.where(fresh, index, failed_at)

        if window.steps:  # XLA can't slice []
            if keep_last and tail is None:
                stop = stop - 1   # the last full step runs after the loop, for its outputs
            per_iteration = self.steps_per_iteration(_batch_rows(window))

            def loop(first, per_iteration, report, failed_at):
                def body(index, report, failed_at):
                    for offset in range(per_iteration):
                        _, step_report = self._run(kind, window, index + offset,
                                                   reduction=None)
                        report, failed_at = note(step_report, index + offset, report,
                                                 failed_at)
                    return index + per_iteration, report, failed_at

                return tf.while_loop(
                    lambda index, report, _: (index + per_iteration <= stop)
                    & tf.equal(report[0], 0),
                    body, (first, report, failed_at), parallel_iterations=1)

            index, report, failed_at = loop(start, per_iteration, report, failed_at)
            first, last = tf.get_static_value(start), tf.get_static_value(stop)
            if first is not None and last is not None:   # a whole epoch: the count is known
                if (last - first) % per_iteration:          # the odd step, inline
                    _, step_report = self._run(kind, window, last - 1, reduction=None)
                    report, failed_at = note(step_report, last - 1, report, failed_at)
            elif per_iteration > 1:
                _, report, failed_at = loop(index, 1, report, failed_at)
            if keep_last and tail is None:
                last_outputs, step_report = self._run(kind, window, stop)
                report, failed_at = note(step_report, stop, report, failed_at)
        if tail is not None:
            last_outputs, step_report = self._run(kind, window, tail=tail)
            report, failed_at = note(step_report, tf.constant(-2), report, failed_at)
        return last_outputs, report, failed_at

    def _train_or_test(self, kind, window, start, stop, tail):
        last_outputs, report, failed_at = self._steps_of(kind, window, start, stop, tail)
        logs = self.model.get_metrics_result() if self._steps_log_metrics[kind] \
            else last_outputs
        return logs, report, failed_at

    def _one(self, kind, window, index, tail):
        """One step, no loop: batch `index` of `window`, or `tail` when `index` is None."""
        outputs, report = self._run(kind, window, index, tail)
        logs = self.model.get_metrics_result() if self._steps_log_metrics[kind] else outputs
        failed_at = tf.where(tf.equal(report[0], 0), -1, -2 if index is None else index)
        return logs, report, failed_at

    def _train_one(self, window, index, tail):
        return self._one("train", window, index, tail)

    def _test_one(self, window, index, tail):
        return self._one("test", window, index, tail)

    def _train(self, window, start, stop, tail):
        return self._train_or_test("train", window, start, stop, tail)

    def _test(self, window, start, stop, tail):
        return self._train_or_test("test", window, start, stop, tail)

    def _predict(self, window, start, count, tail):
        """Batches start..start+count-1 of `window`, then `tail`, through `predict_step`:
        (outputs concatenated, report, the failed step)."""
        report, failed_at = checks.ok_report(), tf.constant(-1)
        outputs = []

        def flatten_steps(stacked):
            return tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0))

        if count:
            first, step_report = self._run("predict", window, start, reduction="concat")
            arrays = tf.nest.map_structure(
                lambda t: tf.TensorArray(t.dtype, size=count, element_shape=t.shape).write(0, t),
                first)
            failed_at = tf.where(tf.equal(step_report[0], 0), failed_at, start)
            report = step_report

            def body(index, arrays, report, failed_at):
                batch_outputs, step_report = self._run("predict", window, start + index,
                                                       reduction="concat")
                fresh = tf.equal(report[0], 0) & tf.not_equal(step_report[0], 0)
                return (index + 1,
                        tf.nest.map_structure(lambda a, t: a.write(index, t), arrays,
                                              batch_outputs),
                        tf.where(fresh, step_report, report),
                        tf.where(fresh, start + index, failed_at))

            _, arrays, report, failed_at = tf.while_loop(
                lambda index, *_: index < count, body,
                (tf.constant(1), arrays, report, failed_at), parallel_iterations=1)
            outputs.append(tf.nest.map_structure(lambda a: flatten_steps(a.stack()), arrays))
        if tail is not None:
            batch_outputs, step_report = self._run("predict", window, tail=tail,
                                                   reduction="concat")
            fresh = tf.equal(report[0], 0) & tf.not_equal(step_report[0], 0)
            report, failed_at = (tf.where(fresh, step_report, report),
                                 tf.where(fresh, -2, failed_at))
            outputs.append(batch_outputs)
        if len(outputs) == 1:
            return outputs[0], report, failed_at
        return tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *outputs), report, \
            failed_at

    # -- compilation -----------------------------------------------------------------------
    def _traced(self, kind, args):
        """The trace of `kind`'s loop for `args`, traced on first use: each a tf.function
        of its own (looked up here by `_signature`, then called directly); under several
        replicas (per-replica values, a plain graph) the tf.function itself."""
        per_iteration = self.steps_per_iteration(_batch_rows(args[0])) \
            if kind in ("train", "test") else 1
        key = (kind, self._xla, per_iteration, _signature(args))
        if key not in self._traces:
            function = tf.function(getattr(self, f"_{kind}"), jit_compile=self._xla,
                                   autograph=False)
            self._traces[key] = function if self.replicas > 1 \
                else function.get_concrete_function(*args)
        return self._traces[key], key

    def _call(self, kind, args):
        """The loop as a tf.function: XLA-compiled, or a graph after XLA failed once."""
        trace, key = self._traced(kind, args)
        try:
            with self.strategy.scope():
                return trace(*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.InternalError) as error:
            if not (self._xla and self._may_fall_back and _xla_says_it_cannot_compile(error)):
                raise
            self._traces.pop(key, None)
            self._xla = self._may_fall_back = False
            for mode in self._modes.values():
                mode.give_up_xla()
            reason = str(error).strip().splitlines()[0][:300]
            warnings.warn(f"fastcustom: XLA could not compile the model's loop ({reason}); "
                          "running it as a plain TF graph instead.", RuntimeWarning, stacklevel=4)
            return self._call(kind, args)

    def run(self, kind, call):
        """One call (`fastcustom.training.sources.Call`) of the `kind` loop: the logs
        ("train", "test") or the outputs ("predict"); TensorFlow's InvalidArgumentError
        when a step's checks fail (in training, before that step runs, where the checks
        read only the data)."""
        mode = self._modes[kind]
        self._xla = mode.xla
        clock, traces = mode.timed(), len(self._traces)
        result = self._run_call(kind, call)
        clock.stop(call.steps, traced=len(self._traces) > traces)
        if kind == "train":
            self._ran.append(self.compiled_with_now)
        return result

    @property
    def compiled_with_now(self):
        return "xla" if self._xla else "graph"

    def _run_call(self, kind, call):
        start = tf.constant(call.start, tf.int32)
        if kind == "predict":
            args = (call.window, start, call.stop - call.start, call.tail)
        elif call.steps == 1 and not self._xla and self.replicas == 1:
            # A plain graph runs one step without a loop: the profiler groups its ops
            # under the step's marker (a TF while loop's iterations it does not), and a
            # step run alone is where a profile is taken.
            kind = f"{kind}_one"
            args = (call.window, None if call.tail is not None else start, call.tail)
        else:
            args = (call.window, start, tf.constant(call.stop, tf.int32), call.tail)
        if kind == "train" and self._xla:
            self._traced(kind, args)            # the step's trace, where its checks come from
            failing = self._prechecks.first_failing(call)
            if failing is not None:
                step, batch, precheck = failing
                if step > call.start:
                    self._run_call(kind, Call(call.window, call.start, min(step, call.stop),
                                              None, call.step))
                checks.raise_if_bad(precheck.report_of(batch).numpy(),
                                    f"the {kind} step on batch {call.step + step - call.start}")
        result, report, failed_at = self._call(kind, args)
        if self._xla:
            failed_at = int(failed_at)
            step = call.step + call.steps - 1 if failed_at == -2 \
                else call.step + failed_at - call.start
            checks.raise_if_bad(report, f"the {kind} step on batch {step}")
        return result


class _Prechecks:
    """The training step's checks run on the data before the steps (`checks.Precheck`),
    once per `Indexed` window (the rows that fail): arrays once per fit, a stream's
    window once per call (`Stacked` windows run under several replicas, never under
    XLA); `first_failing(call)` is the call's first step that would fail."""

    def __init__(self, loops):
        self.loops = loops
        self._of_spec = {}       # batch signature -> Precheck or None
        self._bad_rows = (None, None)     # (data, rows whose checks fail) of the last window
        self._order = (None, None)        # (order tensor, as NumPy)

    def _precheck(self, window):
        spec = batch_spec(window.data, None)   # any number of rows
        key = _signature(spec)
        if key not in self._of_spec:
            concrete = self.loops._step("train").get_concrete_function(spec)
            self._of_spec[key] = checks.Precheck.of(concrete)
        return self._of_spec[key]

    def first_failing(self, call):
        """(step index in the call's window, its batch, the precheck) of the call's first
        failing step, or None."""
        window = call.window
        precheck = self._precheck(window)
        if precheck is None:
            return None
        steps = list(range(call.start, call.stop)) + (["tail"] if call.tail is not None else [])
        flags = self._array_flags(precheck, window)
        if not flags.any():
            return None
        order = self._order_of(window)
        rows = np.arange(window.num_samples) if order is None else order
        for step in steps:
            first = window.steps * window.batch_size if step == "tail" \
                else step * window.batch_size
            last = window.num_samples if step == "tail" else first + window.batch_size
            if flags[rows[first:last]].any():
                batch = window.tail_batch(True) if step == "tail" else \
                    window.batch(tf.constant(step))
                return (call.stop if step == "tail" else step), batch, precheck
        return None

    def _array_flags(self, precheck, window):
        data, flags = self._bad_rows
        if data is not window.data:
            flags = precheck.row_flags_of(window.data).numpy()
            self._bad_rows = (window.data, flags)
        return flags

    def _order_of(self, window):
        order, as_numpy = self._order
        if order is not window.order:
            as_numpy = None if window.order is None else window.order.numpy()
            self._order = (window.order, as_numpy)
        return as_numpy


def _keras_would_allow_xla(model):
    """Keras's rule (its layers, op determinism) and the model's compile: XLA unless
    `compile(jit_compile=False)` could be told apart from Keras's CPU default."""
    if not keras_internals.supports_xla(model):
        return False
    if tf.config.list_physical_devices("GPU"):
        # Keras's "auto" is True on a GPU where the model supports XLA: False here was asked.
        return bool(getattr(model, "jit_compile", True))
    return True   # Keras's "auto" never compiles on a CPU; accelerate's does


def compiled_loops(model, jit_compile="auto"):
    """The model's `CompiledLoops`, made again after a new `compile` (like `train_function`).

    Kept on the model past Keras's attribute tracking, so it is not saved.
    """
    key = (id(getattr(model, "optimizer", None)), id(keras_internals.compile_loss(model)),
           id(keras_internals.compile_metrics(model)), id(model.distribute_strategy),
           jit_compile, tuple(id(v) for v in model.trainable_variables))
    cached = getattr(model, "_fastcustom_loops", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    loops = CompiledLoops(model, jit_compile)
    object.__setattr__(model, "_fastcustom_loops", (key, loops))
    return loops
