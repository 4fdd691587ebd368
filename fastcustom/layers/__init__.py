"""The notes' custom layers as serializable Keras layers."""

from fastcustom.layers.dense import MyDense
from fastcustom.layers.exponential import Exponential
from fastcustom.layers.multi import MyMultiLayer
from fastcustom.layers.noise import AddGaussianNoise

__all__ = ["AddGaussianNoise", "Exponential", "MyDense", "MyMultiLayer"]
