"""Load a study YAML into :class:`pisweep.study.spec.Study`, with errors that name the file, line and field path.

Relative paths in a spec are resolved against the folder that holds the spec file, so a study means the same
thing whatever the current directory is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pisweep.errors import SpecError
from pisweep.study.crossfield import cross_field_problems
from pisweep.study.spec import Study
from pisweep.study.yamlfile import parse_yaml


def load_study(path: str | Path, identity_version: int | None = None, recipe: str | None = None) -> Study:
    """Parse and validate a study file; raise :class:`SpecError` with every problem found. ``identity_version``:
    the one the study is recorded under, whose defaults it keeps (study/recipe.py; None: a new study's);
    ``recipe``: load it under this recipe instead of its own (what `pisweep plan --compare-recipes` shows)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    data = parse_yaml(text, path)
    root = yaml.compose(text)  # the nodes, for the line numbers of field errors
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a study file must be a mapping with keys such as name, output_root, data, grid")
    data = resolve_paths(data, path.resolve().parent)
    if recipe is not None:
        data["recipe"] = recipe
    try:
        study = Study.model_validate(data, context={"identity_version": identity_version})
    except ValidationError as e:
        raise SpecError(format_errors(path, root, [(err["loc"], describe(err)) for err in e.errors()])) from None
    problems = cross_field_problems(study)
    if problems:
        raise SpecError(format_errors(path, root, problems))
    return study


def study_from_json(data: dict[str, Any], identity_version: int | None = None) -> Study:
    """Rebuild a study stored in the ledger or a job file (paths there are already absolute); ``identity_version``:
    the one it is recorded under (a study stored before a field existed gets that version's default)."""
    return Study.model_validate(data, context={"identity_version": identity_version})


# Fields that hold paths, resolved relative to the spec's folder.
_PATH_FIELDS = [("output_root",), ("executor", "profile"), ("ledger",), ("data", "nights"), ("data", "eval_root"), ("data", "synthetic", "root"),
                ("eval", "cache_dir")]


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    data = _deepcopy(data)
    for field in _PATH_FIELDS:
        _resolve_at(data, field, base)
    train = data.get("data", {}).get("train") if isinstance(data.get("data"), dict) else None
    if isinstance(train, dict):
        for scale in train.values():
            if isinstance(scale, dict) and isinstance(scale.get("shards"), str):
                scale["shards"] = "::".join(_abs(part.strip(), base) for part in scale["shards"].split("::"))
    return data


def _resolve_at(data: Any, field: tuple[str, ...], base: Path) -> None:
    for key in field[:-1]:
        if not isinstance(data, dict) or not isinstance(data.get(key), dict):
            return
        data = data[key]
    if isinstance(data, dict) and isinstance(data.get(field[-1]), str):
        data[field[-1]] = _abs(data[field[-1]], base)


def _abs(value: str, base: Path) -> str:
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "://" in expanded or os.path.isabs(expanded):
        return expanded
    return os.path.normpath(base / expanded)


def _deepcopy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key" + _allowed(err)
    if kind == "missing":
        return "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def _allowed(err: dict[str, Any]) -> str:
    """Name the keys allowed at the place of an unknown key."""
    loc = err["loc"]
    model: Any = Study
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        model = _model_of(field.annotation)
        if model is None:
            return ""
    return f" (allowed: {', '.join(getattr(model, 'model_fields', {}))})" if hasattr(model, "model_fields") else ""


def _model_of(annotation: Any) -> Any:
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def format_errors(path: Path, root: yaml.Node | None, problems: list[tuple[tuple[Any, ...], str]]) -> str:
    lines = [f"{path}: invalid study ({len(problems)} problem{'s' if len(problems) != 1 else ''})"]
    for loc, msg in problems:
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"  {where}: {dotted}: {msg}")
    return "\n".join(lines)


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on the path ``loc`` (the key itself for mapping entries)."""
    best: int | None = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    best = key.start_mark.line + 1
                    node = value
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            return best
    return best
