"""The package's two exception types.

Both subclass a builtin so that ``pytest.raises(ValueError)`` and ``except TypeError`` keep working.
"""


class BBConfigError(ValueError):
    """Bad argument, recipe key or config file: the message names the culprit and the valid choices."""


class UnsupportedLayerError(TypeError):
    """A conv/linear subclass whose ``forward`` we cannot reproduce with a quantized weight."""


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in training; the message names the first layer (parameter or output) at fault."""
