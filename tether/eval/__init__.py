"""Evaluation: candidate scoring, perplexity, metrics and gate verdicts.

:mod:`tether.eval.metrics` and :mod:`tether.eval.gates` are pure (numbers in, numbers or
verdicts out; no model, no Prefect, no MLflow) and follow pinned definitions (each quoted in
its function's docstring) so that results compare across tools.
"""
