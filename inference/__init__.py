"""Inference and evaluation, above training: `latte sample` (sample.py: videos from Latte weights) and
`latte quality`'s generic measures (quality.py: appearance, motion, drift against real clips and
baselines), with their key tables (config.py).
"""
