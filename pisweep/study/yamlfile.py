"""Reading the YAML files a user writes (study files, site profiles): safe, and strict about duplicate keys.

PyYAML keeps the last of two equal keys silently; appending a second ``stage2:`` block would then change every
result without a word. Here a duplicate key is an error that names both lines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pisweep.errors import SpecError


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(f"duplicate key {key!r} (first at line {first}, again at line {again})")
        self.again = again


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; SafeLoader reports it itself
                continue
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, path: str | Path) -> Any:
    """The data of a YAML document; SpecError naming ``path:line`` for invalid YAML or a duplicate key."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise SpecError(f"{path}:{e.again}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SpecError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
