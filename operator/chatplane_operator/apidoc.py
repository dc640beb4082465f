"""The ChatCluster field reference, generated from the CRD schema (`crd.build_crd()`).

`python -m chatplane_operator.apidoc` prints the Markdown table that docs/operator.md holds
between its `BEGIN/END GENERATED REFERENCE` markers; a test keeps the two equal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from chatplane_operator import crd

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m chatplane_operator.apidoc) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if kind == "object" and "additionalProperties" in schema and "properties" not in schema:
        return f"map[string]{_type(schema['additionalProperties'])}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return kind


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema or isinstance(schema["default"], dict):
        return ""
    return f"`{json.dumps(schema['default'])}`"


def _rules(schema: dict[str, Any]) -> str:
    notes = [r["message"] for r in schema.get("x-kubernetes-validations") or []]
    for key, word in (("minimum", "min"), ("maximum", "max"), ("maxLength", "max length"),
                      ("maxItems", "max items"), ("pattern", "pattern")):
        if key in schema:
            notes.append(f"{word} `{schema[key]}`")
    return "; ".join(notes)


def rows(schema: dict[str, Any], path: str, required: bool = False) -> Iterator[str]:
    desc = str(schema.get("description", "")).replace("|", "\\|")
    rules = _rules(schema)
    req = " **(required)**" if required else ""
    yield (f"| `{path}` | {_type(schema)} | {_default(schema)} | {desc}{req}"
           f"{' — ' + rules if rules else ''} |")
    props = schema.get("properties") or {}
    needed = set(schema.get("required") or [])
    for name, sub in props.items():
        yield from rows(sub, f"{path}.{name}", name in needed)
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        for name, sub in items["properties"].items():
            yield from rows(sub, f"{path}[].{name}", name in set(items.get("required") or []))


def reference() -> str:
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines = ["| field | type | default | meaning and rules |", "| --- | --- | --- | --- |"]
    lines += list(rows(spec["properties"]["spec"], "spec", True))
    return "\n".join([BEGIN, *lines, END]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
