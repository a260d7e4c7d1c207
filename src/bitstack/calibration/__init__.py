"""Calibration: token samples, and the layer-by-layer pass that gathers activation statistics."""
