"""Bayesian Bits (van Baalen et al., NeurIPS 2020): gated residual doubling of a 2-bit base grid."""

from .config import BayesianBitsConfig
from .quantizer import BayesianBitsQuantizer

__all__ = ["BayesianBitsConfig", "BayesianBitsQuantizer"]
