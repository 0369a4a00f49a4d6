"""Genre mutual information moved to :mod:`tether.eval.metrics.diversity`; this name stays importable."""

from tether.eval.metrics.diversity import genre_mutual_information

__all__ = ["genre_mutual_information"]
