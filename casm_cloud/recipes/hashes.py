"""Stage hashes and the recipe keys each stage reads.

A stage's hash covers its params and the hashes of the stages it reads, so a
changed recipe re-runs exactly the stages whose params hold the change and
those downstream of them.  :func:`stage_keys` records which leaf keys of the
recipe a stage's ``params`` reads (docs/architecture.md, "The runner": its
stage tables come from :func:`stage_table`, and a test keeps them true).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from casm_cloud.recipes.stage import Stage

__all__ = ["params_hash", "recipe_leaves", "stage_hashes", "stage_keys", "stage_table"]


def _jsonable(obj):
    if isinstance(obj, _Recorder):
        return _jsonable(obj._unwrap())
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if hasattr(obj, "identity"):
        return obj.identity()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    return obj


def params_hash(params: Mapping) -> str:
    blob = json.dumps(_jsonable(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_hashes(stages: Sequence[Stage], recipe) -> dict[str, str]:
    """Each stage's hash: its params and the hashes of the stages it reads.

    A change re-runs exactly the stages whose params hold the changed key and
    those downstream of them.
    """
    out: dict[str, str] = {}
    for s in stages:
        ups = ",".join(out[u] for u in s.reads)
        own = params_hash(s.params(recipe))
        out[s.name] = hashlib.sha256(f"{s.name}|{own}|{ups}".encode()).hexdigest()[:16]
    return out


class _Recorder:
    """A read-only view of a recipe that records which leaf keys are read."""

    def __init__(self, obj: BaseModel, path: str, seen: set[str]):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_seen", seen)

    def _key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _unwrap(self):
        self._seen.update(_leaves(self._obj, self._path))
        return self._obj

    def __getattr__(self, name: str):
        if name in type(self._obj).model_fields:
            value = getattr(self._obj, name)
            if isinstance(value, BaseModel):
                return _Recorder(value, self._key(name), self._seen)
            self._seen.add(self._key(name))
            return value
        # A method or property runs on this view, so the keys it reads are recorded too.
        attr = getattr(type(self._obj), name, None)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr) and hasattr(attr, "__get__"):
            return attr.__get__(self)
        self._seen.update(_leaves(self._obj, self._path))
        return getattr(self._obj, name)


def _leaves(obj: BaseModel, path: str = "") -> set[str]:
    out = set()
    for name in type(obj).model_fields:
        key = f"{path}.{name}" if path else name
        value = getattr(obj, name)
        out |= _leaves(value, key) if isinstance(value, BaseModel) else {key}
    return out


def stage_keys(stage: Stage, recipe) -> set[str]:
    """The recipe's leaf keys (``"training.epochs"``) that ``stage.params`` reads."""
    seen: set[str] = set()
    _jsonable(stage.params(_Recorder(recipe, "", seen)))
    return seen


def recipe_leaves(recipe) -> set[str]:
    return _leaves(recipe)


def stage_table(stages: Sequence[Stage], recipe) -> str:
    """The recipe's stage table in Markdown: each stage, the stages it reads, its keys.

    docs/architecture.md holds this table for every recipe; a test keeps it true.
    """
    rows = ["| stage | reads | recipe keys |", "| --- | --- | --- |"]
    for s in stages:
        keys = ", ".join(f"`{k}`" for k in sorted(stage_keys(s, recipe)))
        rows.append(f"| `{s.name}` | {', '.join(s.reads) or '(catalog)'} | {keys} |")
    return "\n".join(rows)
