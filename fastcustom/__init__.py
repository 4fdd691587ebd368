"""fastcustom: the custom Keras components people write by hand, fast and serializable.

Every object is a registered Keras 3 object (TensorFlow backend) that saves and
loads with its full config; the Huber kernels run as a fused custom op when it
is built, else as XLA-compiled graphs. `fastcustom.reference` holds the NumPy
float64 truth they are tested against; `path_info()` says which path is active.
"""

from fastcustom.activations import softplus
from fastcustom.constraints import PositiveWeights
from fastcustom.initializers import GlorotNormalInitializer
from fastcustom.layers import AddGaussianNoise, Exponential, MyDense, MyMultiLayer
from fastcustom.losses import HuberFunction, HuberLoss, create_huber, huber
from fastcustom.metrics import HuberMetric
from fastcustom.models import ReconstructingRegressor
from fastcustom.ops.library import status as path_info
from fastcustom.ops.path import use_path
from fastcustom.regularizers import L1Regularizer
from fastcustom.training import accelerate, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "AddGaussianNoise", "Exponential", "GlorotNormalInitializer", "HuberFunction",
    "HuberLoss", "HuberMetric", "L1Regularizer", "MyDense", "MyMultiLayer",
    "PositiveWeights", "ReconstructingRegressor", "accelerate", "create_huber", "evaluate",
    "fit", "huber", "path_info", "predict", "softplus", "use_path",
]
