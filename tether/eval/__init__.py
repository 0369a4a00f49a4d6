"""Evaluation: candidate scoring, perplexity, metrics and gate verdicts.

:mod:`tether.eval.metrics` and :mod:`tether.eval.gates` are pure (numbers in, numbers or
verdicts out; no model, no Prefect, no MLflow) and follow the pinned definitions in
``DESIGN.md`` so that results compare across tools.
"""
