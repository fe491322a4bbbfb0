"""Shared layer wrapping: exact-type adapters, in-place quantized layers, planning and applying a wrap."""
