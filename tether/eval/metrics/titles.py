"""Free generations against the catalog: title normalisation, :class:`CatalogIndex`, valid-item rates."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

# Quotes and sentence punctuation that models wrap titles in; brackets are kept because
# catalog titles end in "(1995)".
_TITLE_STRIP = "".join(
    [
        " ",
        "\"'`",
        "\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b\u00ab\u00bb\u2039\u203a",  # curly and angle quotes
        ".,;:!?*_",
        "-\u2013\u2014",  # hyphen, en dash, em dash
    ]
)


def normalize_title(s: str) -> str:
    """Normalise a title for exact matching (valid-item rate).

    Steps: Unicode NFKC, casefold (NFKC again, since casefolding can denormalise), drop
    invisible format/control characters (zero-width spaces, BOM), collapse runs of whitespace
    (newlines and tabs included) to one space, then strip surrounding quotes, sentence
    punctuation (``.,;:!?``), markdown emphasis (``*``, ``_``), dashes and spaces.
    Brackets are kept: ``'"Heat (1995)."'`` -> ``'heat (1995)'``.
    """
    s = unicodedata.normalize("NFKC", s)
    s = unicodedata.normalize("NFKC", s.casefold())
    s = "".join(ch for ch in s if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    s = " ".join(s.split())
    return s.strip(_TITLE_STRIP)


_YEAR = re.compile(r"\s*\((\d{4})\)$")


class CatalogIndex:
    """Resolve free generations to catalog items: by exact title, else by unambiguous name.

    Pinned: "Valid-item rate: share of free generations that map exactly (after
    normalization) to a catalog title." Normalisation is :func:`normalize_title` on both
    sides, plus one rule for MovieLens-style titles: the trailing ``(YYYY)`` is disambiguation
    metadata, so a generation whose name, without its year, equals the name of exactly one
    catalog title maps to that title ("Tide to Lisbon, Part 4 (1980)" -> "... (1981)" when no
    other "Tide to Lisbon, Part 4" exists). A name shared by several titles (remakes) still
    needs the right year. An empty generation never maps. :meth:`exact` is the strict rate's
    test (title and year), reported beside the valid-item rate.
    """

    def __init__(self, catalog_titles: Iterable[str]) -> None:
        self.titles: dict[str, str] = {}
        by_name: dict[str, list[str]] = {}
        for title in catalog_titles:
            norm = normalize_title(title)
            if not norm:
                continue
            self.titles.setdefault(norm, title)
            by_name.setdefault(_YEAR.sub("", norm), []).append(title)
        self.unique_names = {name: titles[0] for name, titles in by_name.items() if len(titles) == 1}

    def exact(self, generation: str) -> bool:
        """The generation is a catalog title, year included."""
        norm = normalize_title(generation)
        return bool(norm) and norm in self.titles

    def resolve(self, generation: str) -> str | None:
        """The catalog title the generation names, or None."""
        norm = normalize_title(generation)
        if not norm:
            return None
        if norm in self.titles:
            return self.titles[norm]
        return self.unique_names.get(_YEAR.sub("", norm))


def valid_item_rate(generations: Sequence[str], catalog_titles: Iterable[str] | CatalogIndex) -> float:
    """Share of free generations that map to a catalog title (:class:`CatalogIndex`)."""
    if len(generations) == 0:
        raise ValueError("valid_item_rate: no generations")
    index = catalog_titles if isinstance(catalog_titles, CatalogIndex) else CatalogIndex(catalog_titles)
    return sum(1 for g in generations if index.resolve(g) is not None) / len(generations)


def exact_title_rate(generations: Sequence[str], catalog_titles: Iterable[str] | CatalogIndex) -> float:
    """Share of free generations that are a catalog title with its year (the strict rate)."""
    if len(generations) == 0:
        raise ValueError("exact_title_rate: no generations")
    index = catalog_titles if isinstance(catalog_titles, CatalogIndex) else CatalogIndex(catalog_titles)
    return sum(1 for g in generations if index.exact(g)) / len(generations)
