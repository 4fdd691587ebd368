"""The compiled training loop: `fit`, many optimizer steps per XLA-compiled call.

`fit.py` is the entry point; `data.py` forms each epoch's batches on the
device; `loop.py` holds the compiled step loop; `components.py` turns names
into losses, optimizers and metrics.
"""

from fastcustom.training.fit import fit

__all__ = ["fit"]
