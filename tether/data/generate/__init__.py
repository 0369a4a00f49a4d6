"""A deterministic sample-data generator: a movie catalog and an interaction log that a
small LLM can learn from.

The files are MovieLens-latest shaped (``ratings.csv``: ``userId,movieId,rating,timestamp``;
``movies.csv``: ``movieId,title,genres,description``, fields with commas quoted the way
MovieLens quotes them), so the ingest stage reads them with its ordinary MovieLens loader.

The same seed and settings give byte-for-byte identical files (one ``numpy`` Generator,
consumed in a fixed order; no set or dict iteration order reaches the output).

Structure the log carries (what a fine-tuned model can learn, beyond popularity):

* **Series watched in order.** ``series_share`` of the catalog belongs to series of 2-4
  parts titled ``"Harbor Lights, Part 1 (2008)"``, ``"Harbor Lights, Part 2 (2010)"``, ...
  (one part every two years, so a sequel's year follows from its predecessor's).
  A user never starts a series in the middle: only Part 1 is ever picked "fresh", and
  Part n+1 is only watched after Part n. While a user has a started, unfinished series,
  each next interaction is its next part with probability ``continue_prob`` (the most
  recently started series first). So continuations are frequent and mostly land within a
  few steps of the previous part, i.e. inside the prompt's history window: with the
  defaults over a third of the held-out last items are the next part of a series already
  in the user's history (see :func:`structure_report`; params.yaml defaults, seed 1234:
  36% of last items, 35% with the previous part among the last 5; 72% of interactions
  in a favourite genre vs 22% by chance; the top 10% of items get 38% of interactions).
* **Genre affinity.** Each item has 1-2 of ten genres (``"Crime|Drama"``); each user has
  1-2 favourite genres. A fresh pick comes from one of the user's favourite genres with
  probability ``favourite_genre_prob``, else from the whole catalog. Ratings are higher
  for favourite-genre items. Descriptions name the primary genre ("a tense thriller about
  ..."), so item text carries the genre too.
* **Popularity skew.** Fresh picks follow Zipf-like weights ``1 / rank ** popularity_exponent``
  over a random ranking of the items that can be picked fresh (standalone titles and
  Part 1s), so a few items are watched by many users and most by few.

Other properties: titles are unique readable English ``Title (Year)`` of 2-4 words (some
stored the MovieLens way, ``"Silent Harbor, The (2004)"``, which the cleaning stage turns
back into ``"The Silent Harbor (2004)"``); a user never watches an item twice; timestamps
strictly increase within a user, starting after ``start_date``; ratings are half-steps in
1..5. A user whose options run out (tiny catalogs) gets a shorter history.

:func:`make_large_log` builds a large, somewhat dirty log (duplicates, MovieLens article
titles, PII and odd Unicode in the text, a few short users) with vectorised numpy, in the
canonical table shape, for benchmarks of the cleaning stage.

Modules: :mod:`~tether.data.generate.catalog` (titles, series, genres, descriptions),
:mod:`~tether.data.generate.log` (the interaction log and the files written),
:mod:`~tether.data.generate.report` (:func:`structure_report`), :mod:`~tether.data.generate.large`
(:func:`make_large_log`). ``from tether.data.generate import ...`` keeps working as when this
was one module.
"""

from tether.data.generate.catalog import GENRES, SERIES_CADENCE
from tether.data.generate.large import make_large_log
from tether.data.generate.log import GenerateSummary, SampleData, generate_sample_data, generate_tables
from tether.data.generate.report import structure_report

__all__ = [
    "GENRES",
    "SERIES_CADENCE",
    "GenerateSummary",
    "SampleData",
    "generate_sample_data",
    "generate_tables",
    "make_large_log",
    "structure_report",
]
