"""Metrics as a scrape sees them, for tests: the exposition of some parts
(chatplane.metrics sources) and samples read back by prometheus_client's parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from chatplane import metrics
from chatplane.bench import scrape


def exposition(*sources: metrics.Source) -> str:
    """The text format of these parts alone (no process figures)."""
    found = CollectorRegistry(auto_describe=True)
    for source in sources:
        found.register(metrics._Part(source))  # type: ignore[arg-type]
    return generate_latest(found).decode()


def samples(text: str) -> dict[str, float]:
    """{sample name with its labels: value} (chatplane.bench.scrape.parse)."""
    return scrape.parse(text)


def of(*sources: metrics.Source) -> dict[str, float]:
    return samples(exposition(*sources))
