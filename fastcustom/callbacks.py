"""`StepMarkers`: the profiler's step markers for Keras's own `model.fit`.

TensorBoard's Profile tab (xprof) finds training steps by their markers: a
`tf.profiler.experimental.Trace` with a `step_num` and `_r=1` around each step. Keras 3
marks a profiled batch as "Profiled batch", without `_r=1`, so the Overview page says
"No step marker observed and hence the step time is unknown". Add this callback to
`model.fit` and each batch the profiler records is a step there:

>>> model.fit(x, y, epochs=2, callbacks=[
...     keras.callbacks.TensorBoard("logs", profile_batch=(5, 10)),
...     fastcustom.callbacks.StepMarkers()])

Put it after the `TensorBoard` callback, which starts the profiler in the same batch hook
(and stops it before this callback's last marker ends). xprof leaves out the first and
the last step of a capture of more than 5 steps (they may be incomplete): the Overview
above shows steps 6 to 8; `fastcustom.profile.profile_fit` asks for the window around
the steps you want. An accelerated `model.fit` marks its own steps and shows 5 to 10;
there this callback does nothing.
"""

import keras
import tensorflow as tf

from fastcustom import private_symbols

MARKER = "train"


class StepMarkers(keras.callbacks.Callback):
    """Each training batch run while the profiler records, in a step marker numbered as
    Keras numbers batches (1, 2, ... from the start of the fit)."""

    def __init__(self):
        super().__init__()
        self._step = 0
        self._marker = None

    def on_train_begin(self, logs=None):
        self._step = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._step += 1
        if private_symbols.profiler_capturing() and "_fastcustom_accelerated" not in vars(
                self.model):
            self._marker = tf.profiler.experimental.Trace(MARKER, step_num=self._step, _r=1)
            self._marker.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._marker is not None:
            self._marker.__exit__(None, None, None)
            self._marker = None
