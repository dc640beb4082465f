"""The `spec:` examples of docs/operator.md's issue-15 sections are valid ChatCluster specs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cluster_body

from chatplane_operator import api

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
SECTIONS = ("## Admin port and the drain call's credential", "## TLS and certificates",
            "## NetworkPolicy", "## Token key rotation")


def _examples() -> list[str]:
    text = DOC.read_text()
    out = []
    for heading in SECTIONS:
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        out += [b for b in re.findall(r"```yaml\n(.*?)```", body, re.S)
                if b.startswith("spec:")]
    return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def test_there_are_examples() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize("example", _examples())
def test_every_spec_example_is_valid(example: str) -> None:
    body = copy.deepcopy(cluster_body())
    _merge(body["spec"], yaml.safe_load(example)["spec"])
    cluster = api.parse(body)
    api.validate(cluster)


@pytest.mark.kube
@pytest.mark.parametrize("example", _examples())
def test_the_apiserver_accepts_every_spec_example(kube: Any, namespace: str,
                                                  example: str) -> None:
    body = copy.deepcopy(cluster_body(f"doc-{abs(hash(example)) % 10**6}", namespace))
    del body["metadata"]["uid"], body["metadata"]["generation"]
    _merge(body["spec"], yaml.safe_load(example)["spec"])
    created = kube.create(body)
    api.validate(api.parse(created))  # with the CRD's defaults filled in
