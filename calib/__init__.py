"""Calibration and explicit Q/DQ quantization (INT8 W8A8, INT4 weight-only) and PARO planning.

Not built yet: see the calibration issue. The package exists so that the import namespace of
DESIGN.md section 2 is complete.
"""
