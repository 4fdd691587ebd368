"""The compiled training loops: Keras's `fit`, `evaluate` and `predict` with many steps per
XLA call, and `accelerate(model)`, which makes a model's own methods use them.

`methods.py` holds the three entry points (Keras's callbacks and data adapters around our
loop); `loop.py` the compiled loops over the model's own steps; `sources.py` the data of
an epoch as compiled calls, `windows.py` what one call reads; `checks.py` Keras's data
errors kept under XLA; `accelerate.py` the one-line switch; `keras_internals.py` the one
seam to Keras's private trainer code.
"""

from fastcustom.training.accelerate import accelerate, is_accelerated
from fastcustom.training.methods import evaluate, fit, predict

__all__ = ["accelerate", "evaluate", "fit", "is_accelerated", "predict"]
