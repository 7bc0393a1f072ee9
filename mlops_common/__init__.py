"""Shared plumbing every package may import: settings, errors, logging.

Kept small and free of heavy imports (no TensorFlow, no MLflow) so that any
command path can use it without paying for them.
"""
