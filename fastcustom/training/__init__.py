"""The compiled training loops: Keras's `fit`, `evaluate` and `predict` with many steps per
XLA call, and `accelerate(model)`, which makes a model's own methods use them.

`methods.py` holds the three entry points (Keras's callbacks and data adapters around our
loop); `loop.py` the compiled loops over the model's own steps; `data.py` the batches
on the device or stacked from a stream; `accelerate.py` the one-line switch;
`keras_internals.py` the parts of Keras's trainer they call.
"""

from fastcustom.training.accelerate import accelerate, is_accelerated
from fastcustom.training.methods import evaluate, fit, predict

__all__ = ["accelerate", "evaluate", "fit", "is_accelerated", "predict"]
