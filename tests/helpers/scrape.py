"""Reading Prometheus endpoints in tests: fetch, parse, look values up."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def scrape(address: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as r:
        return str(r.read().decode())


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def names(text: str) -> set[str]:
    """Every name a query may use: family names, their typed suffixes, and sample names (families without samples
    yet, e.g. a labelled counter nobody incremented, still count: their HELP/TYPE lines are there)."""
    out: set[str] = set()
    for family in text_string_to_metric_families(text):
        out.add(family.name)
        out.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        out.update(s.name for s in family.samples)
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of name whose labels include labels (0 if none)."""
    return sum(s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items())
