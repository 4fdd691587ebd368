"""Training steps the TensorBoard profiler can see: step markers in the accelerated loop.

xprof's Overview page finds steps by their markers: a `tf.profiler.experimental.Trace`
with a `step_num` and `_r=1` around each training step (Keras 3 marks "Profiled batch",
which it does not count). The accelerated loop runs many steps per call, so where a
profile is taken it runs one step per call, each in such a marker, numbered as Keras
numbers batches (1, 2, ... from the start of the fit):

- `keras.callbacks.TensorBoard(profile_batch=(first, last))`: the loop starts and stops
  the callback's trace itself (its own files, in its `train` folder) so that the
  Overview shows the steps `first` .. `last`: xprof leaves out the first and the last
  step of a capture of more than `XPROF_KEEPS_EDGES_UP_TO` steps (as possibly
  incomplete), so a window of more than 3 steps is captured with one more step on each
  side;
- every step while the profiler is capturing for another reason
  (`tf.profiler.experimental.start` / `stop`, the profiler server).

Outside a profile nothing changes: calls stay as long as they were, and each
TensorBoard's batch counter follows the real step, so batch-level summaries are
written at the step they describe. A window the fit never reaches gives a warning.
"""

import warnings

import keras
import tensorflow as tf

from fastcustom import private_symbols
from fastcustom.training import keras_internals
from fastcustom.training.sources import Call

MARKER = "train"
# xprof's Overview keeps every step of a capture of up to this many steps, and leaves out
# the first and the last of a longer one (tests/test_profile.py checks both).
XPROF_KEEPS_EDGES_UP_TO = 5


def capture(first, last):
    """The steps (0-based, inclusive) to profile so that xprof shows `first` .. `last`."""
    if last - first + 1 + 2 > XPROF_KEEPS_EDGES_UP_TO:
        return first - 1, last + 1
    return first, last


def split(call, cuts):
    """`call` cut before each epoch step in `cuts` (sorted): the parts, in order."""
    parts, start, step = [], call.start, call.step
    for cut in cuts:
        if not step < cut < call.step + call.steps:
            continue
        length = cut - step
        stop = min(start + length, call.stop)
        parts.append(Call(call.window, start, stop, None, step))
        start, step = stop, cut
    parts.append(Call(call.window, start, call.stop, call.tail, step))
    return parts


class StepMarkers:
    """Where a fit's training steps run one per call, in step markers."""

    def __init__(self, callbacks):
        self.tensorboards = [cb for cb in callbacks
                             if isinstance(cb, keras.callbacks.TensorBoard)]
        # (callback, first, last) of each window and (first, last) of its capture, 0-based
        # steps from the fit's start
        self.windows, self.captures = [], []
        for callback in self.tensorboards:
            window = keras_internals.profile_window(callback)
            if window is not None:
                keras_internals.tensorboard_profiles(callback, False)   # we start it
                self.windows.append((callback, window[0] - 1, window[1] - 1))
                self.captures.append(capture(window[0] - 1, window[1] - 1))
        self.tracing = set()
        self.done = 0      # training steps run in this fit so far

    def _captured(self, step):
        """Whether `step` (0-based) runs inside a TensorBoard capture."""
        return any(first <= step <= last for first, last in self.captures)

    def calls(self, calls):
        """The epoch's calls, each with the step number of its marker (or None): cut
        around the TensorBoard captures, one step each inside them or while the profiler
        captures."""
        for call in calls:
            first = self.done
            cuts = {call.step + edge - first
                    for low, high in self.captures for edge in (low, high + 1)
                    if first < edge < first + call.steps}
            for part in split(call, sorted(cuts)):
                if self._captured(self.done) or private_symbols.profiler_capturing():
                    for step in split(part, range(part.step + 1, part.step + part.steps)):
                        yield step, self.done + 1
                        self.done += step.steps
                else:
                    yield part, None
                    self.done += part.steps

    def before_call(self, call):
        """Start a TensorBoard's trace at its capture's first step; keep each TensorBoard's
        batch counter at the step Keras would be at (it counts batch hooks, once per
        call here): its `on_train_batch_begin` adds one, to the call's first step."""
        for (callback, _, _), (first, last) in zip(self.windows, self.captures):
            if callback not in self.tracing and max(first, 0) <= self.done <= last:
                keras_internals.start_tensorboard_trace(callback)
                self.tracing.add(callback)
        for callback in self.tensorboards:
            keras_internals.set_tensorboard_batch(callback, self.done)

    def after_call(self, call):
        """Set the batch counters to the call's last step (for `on_train_batch_end`), and
        stop a trace after its capture's last step."""
        for callback in self.tensorboards:
            keras_internals.set_tensorboard_batch(callback, self.done + call.steps)
        for (callback, _, window_last), (_, last) in zip(self.windows, self.captures):
            if callback in self.tracing and self.done + call.steps > last:
                self._stop(callback, window_last)

    def _stop(self, callback, window_last):
        keras_internals.stop_tensorboard_trace(callback, window_last + 1)
        self.tracing.discard(callback)

    def marker(self, step_num):
        """The profiler's step marker for a step (a context manager)."""
        return tf.profiler.experimental.Trace(MARKER, step_num=step_num, _r=1)

    def end(self):
        """At the end of the fit: stop a capture still open, give each TensorBoard its own
        profiling back, and warn of each window the fit never reached."""
        for callback, first, last in self.windows:
            if callback in self.tracing:
                self._stop(callback, last)
            keras_internals.tensorboard_profiles(callback, True)
            if first >= self.done:
                warnings.warn(
                    f"fastcustom: TensorBoard(profile_batch=({first + 1}, {last + 1})) "
                    f"profiled nothing: the fit ran {self.done} training steps.", UserWarning,
                    stacklevel=4)
