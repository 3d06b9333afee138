"""Reference quantization for every format a spec names (see :mod:`moe_core.weights`)."""

from .formats import (FORMATS, dequantize_weights, fake_quantize_activation, quantize_weights,
                      tolerance)

__all__ = ["FORMATS", "dequantize_weights", "fake_quantize_activation", "quantize_weights",
           "tolerance"]
