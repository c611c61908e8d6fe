"""Checking a values file against the chart it is for, as ``helm install`` would see it.

Helm validates a chart's ``values.schema.json`` against the chart's defaults merged with the
user's values, so :func:`merged` does the same coalescing (maps merge, everything else
replaces, ``null`` deletes). A schema does not catch a misspelt key unless it closes the object,
and most charts ship no schema at all, so :func:`unknown_keys` also walks every key path the
file sets and requires it to exist in the chart's own ``values.yaml`` (or its schema, or a
comment of ``values.yaml`` for the keys ``releases.yaml`` lists as ``commented_keys``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HELM_VALUES = REPO / "helm-values"
_COMMENTED_KEY = re.compile(r"^\s*#+\s*(?:-\s*)?([A-Za-z_][\w.-]*)\s*:")


@dataclass(frozen=True)
class Release:
    """One entry of ``helm-values/releases.yaml``."""

    release: str
    namespace: str
    chart: str
    version: str
    values: str
    vendored: str
    commented_keys: tuple[str, ...] = ()
    free_form: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chart_dir(self) -> Path:
        return HELM_VALUES / self.vendored

    @property
    def values_path(self) -> Path:
        return HELM_VALUES / self.values

    def defaults(self) -> dict[str, Any]:
        return load_yaml(self.chart_dir / "values.yaml")

    def schema(self) -> dict[str, Any] | None:
        return _load_schema(self.chart_dir / "values.schema.json")


@cache
def _load_schema(path: Path) -> dict[str, Any] | None:
    """Read-only use: the schema is shared between calls."""
    return json.loads(path.read_text()) if path.is_file() else None


def releases() -> list[Release]:
    pins = load_yaml(HELM_VALUES / "releases.yaml")
    return [
        Release(
            release=r["release"],
            namespace=r["namespace"],
            chart=r["chart"],
            version=str(r["version"]),
            values=r["values"],
            vendored=r["vendored"],
            commented_keys=tuple(r.get("commented_keys", ())),
            free_form=tuple(r.get("free_form", ())),
            raw=r,
        )
        for r in pins["releases"]
    ]


@cache
def _load_yaml_text(path: Path) -> str:
    return path.read_text()


def load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return copy.deepcopy(yaml.load(_load_yaml_text(path), Loader=loader))


def merged(defaults: Any, overrides: Any) -> Any:
    """Helm's coalescing of a chart's defaults with user values."""
    if isinstance(defaults, dict) and isinstance(overrides, dict):
        out = dict(defaults)
        for key, value in overrides.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merged(out[key], value)
            else:
                out[key] = value
        return out
    return overrides


def schema_errors(values: Any, schema: Mapping[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message[:300]}"
        for err in _validator(json.dumps(schema, sort_keys=True)).iter_errors(values)
    ]


@cache
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft7Validator
    )
    return validator_class(schema)


def _resolve(node: Any, root: Mapping[str, Any]) -> Any:
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 20:
        ref = str(node["$ref"])
        if not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node, seen = target, seen + 1
    return node


def _schema_props(node: Any, root: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The properties a schema node declares, and whether it lets other keys in."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return {}, True
    props = dict(node.get("properties") or {})
    open_ = node.get("additionalProperties") is True or isinstance(
        node.get("additionalProperties"), dict
    )
    open_ = open_ or bool(node.get("patternProperties"))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key) or []:
            sub_props, sub_open = _schema_props(sub, root)
            props.update(sub_props)
            open_ = open_ or (sub_open and not sub_props)
    return props, open_


def commented_keys(chart_dir: Path) -> set[str]:
    """Key names that the chart's values.yaml documents in comments only."""
    text = _load_yaml_text(chart_dir / "values.yaml")
    return {m[1] for line in text.splitlines() if (m := _COMMENTED_KEY.match(line))}


def unknown_keys(release: Release, values: Any) -> list[str]:
    """Every key path ``values`` sets that the chart does not have."""
    schema = release.schema() or {}
    allowed_comments = set(release.commented_keys)
    return list(_walk(values, release.defaults(), schema, schema, "", release, allowed_comments))


def _walk(
    value: Any,
    default: Any,
    schema: Any,
    root: Mapping[str, Any],
    where: str,
    release: Release,
    commented: set[str],
) -> Iterator[str]:
    if isinstance(value, list):
        item_default: dict[str, Any] = {}
        if isinstance(default, list):
            for item in default:
                if isinstance(item, dict):
                    item_default.update(item)
        item_schema = _resolve(schema, root).get("items", {}) if isinstance(schema, dict) else {}
        items_documented = any(c.startswith(f"{where}[].") for c in commented)
        for item in value:
            if isinstance(item, dict) and (
                item_default or items_documented or _schema_props(item_schema, root)[0]
            ):
                yield from _walk(
                    item, item_default, item_schema, root, f"{where}[]", release, commented
                )
        return
    if not isinstance(value, dict) or where in release.free_form:
        return
    props, _ = _schema_props(schema, root)
    known = set(default) if isinstance(default, dict) else set()
    known |= set(props)
    prefix = f"{where}." if where else ""
    documented = {c[len(prefix) :] for c in commented if c.startswith(prefix)}
    documented = {c for c in documented if "." not in c}
    # A map whose chart defaults, schema or comments name its keys is closed, even where the
    # schema lets anything in (``global`` is open for subcharts): a key outside them is a typo.
    # A map that names none (``podAnnotations: {}``) is the user's.
    closed = bool(known | documented)
    for key, item in value.items():
        path = f"{prefix}{key}"
        if key in known:
            child_default = default.get(key) if isinstance(default, dict) else None
            child_schema = props.get(key, {})
            yield from _walk(item, child_default, child_schema, root, path, release, commented)
        elif key in documented:
            continue
        elif closed:
            yield path


def commented_key_problems(release: Release) -> list[str]:
    """``commented_keys`` entries that the chart's values.yaml does not document."""
    documented = commented_keys(release.chart_dir)
    return [
        f"{path}: not in a comment of {release.vendored}/values.yaml"
        for path in release.commented_keys
        if path.rsplit(".", 1)[-1] not in documented
    ]


def check_values(release: Release, values: Any) -> list[str]:
    """Key paths the chart does not have; when there are none, what its schema refuses (the
    check ``helm install`` makes)."""
    unknown = unknown_keys(release, values)
    problems = [f"{path}: not a key of {release.vendored}" for path in unknown]
    schema = release.schema()
    if not problems and schema is not None:
        problems = schema_errors(merged(release.defaults(), values), schema)
    return problems


def key_paths(value: Any, where: str = "") -> Iterator[tuple[tuple[Any, ...], str]]:
    """(location, dotted path) of every mapping key in ``value``, lists included."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            yield (key,), path
            for loc, sub in key_paths(item, path):
                yield (key, *loc), sub
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for loc, sub in key_paths(item, f"{where}[]"):
                yield (i, *loc), sub


def misspell(values: Any, location: tuple[Any, ...]) -> Any:
    """A copy of ``values`` with the key at ``location`` misspelt (a letter doubled)."""
    copy_ = copy.deepcopy(values)
    parent = copy_
    for step in location[:-1]:
        parent = parent[step]
    key = location[-1]
    typo = f"{key}{str(key)[-1]}"
    parent[typo] = parent.pop(key)
    return copy_
