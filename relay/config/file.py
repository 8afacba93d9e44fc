"""Reading the configuration file: strict YAML and ``${NAME}`` references.

Kept apart from the schema (:mod:`relay.config.schema`) because it is about text, not settings: a
loader that reports duplicate keys, reads YAML 1.2 scalars and bounds what aliases expand to,
and an expansion of environment references that names the key of every unset variable. No
message quotes a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from relay.core.errors import ConfigError

Loc = tuple[str | int, ...]


def render_loc(loc: Iterable[str | int]) -> str:
    """``('upstream', 'accounts', 0, 'api_key')`` -> ``upstream.accounts[0].api_key``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's top-level mapping (empty for an empty file), or ConfigError with one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"config: cannot read {os.fspath(path)}: {exc.strerror or exc}"]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config: cannot read {os.fspath(path)}: not UTF-8 text"]) from None
    try:
        data = _load(text)
    except RecursionError:
        raise ConfigError(["config: invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as exc:
        # Only the problem and the line: PyYAML's full text quotes the offending line, which
        # may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([f"config: invalid YAML{where}: {problem}"]) from None
    if data is None:  # an empty file (or only comments) is an empty mapping
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping of keys"])
    return data


# Aliases may repeat parts of the document: a config may grow through them to this many values,
# or to ALIAS_GROWTH times the values written, whichever is more. A "billion laughs" file of a
# few hundred bytes would otherwise expand to hundreds of millions.
MAX_VALUES = 100_000
ALIAS_GROWTH = 10
MAX_DEPTH = 64


def _load(text: str) -> Any:
    """Compose the YAML graph, bound what its aliases expand to, then build the data.

    With libyaml's parser when PyYAML has it (~10x faster on a config of 10,000 accounts and
    subscribers); a file it refuses is read again with the Python parser, whose messages are
    the ones the relay has always shown (libyaml words the same problems differently).
    """
    try:
        return _load_with(_FastLoader, text)
    except yaml.YAMLError:
        return _load_with(_StrictLoader, text)


def _load_with(cls: type[yaml.SafeLoader], text: str) -> Any:
    loader = cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """ConfigError if the document, with every alias expanded, has more values than allowed,
    nests deeper than MAX_DEPTH, or refers to itself. Linear in the nodes as written: each
    distinct node's expanded size is computed once."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            ancestors.discard(key)
            continue
        if key in size:
            continue  # an alias of a node already measured
        if key in ancestors:
            raise ConfigError(["config: invalid YAML: an alias refers to a node that contains it"])
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)
    written = len(size)
    limit = max(MAX_VALUES, ALIAS_GROWTH * written)
    if size[id(root)] > limit:
        raise ConfigError(
            [f"config: invalid YAML: aliases expand the document to more than {limit} values"]
        )
    if depth[id(root)] > MAX_DEPTH:
        raise ConfigError([f"config: invalid YAML: nested more than {MAX_DEPTH} levels deep"])


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys and reads plain scalars the YAML 1.2 way.

    A duplicated key would otherwise silently win. YAML 1.1 reads ``name: off`` or ``no`` as a
    boolean and an unquoted ``2025-07-01 14:53:43`` as a datetime (crashing on ``2025-13-01``);
    here only true/false are booleans and times stay the text written, for the schema to check.
    """


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if not tag.endswith((":bool", ":timestamp"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` followed by overrides is legitimate
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            continue  # unhashable keys get PyYAML's own error below
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """:class:`_StrictLoader`'s rules on libyaml's parser (the resolvers and constructors are
    Python code either way)."""


_FastLoader.yaml_implicit_resolvers = _StrictLoader.yaml_implicit_resolvers
_FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# ${NAME} or ${NAME:-default}; the bare "${" alternative catches an unterminated reference.
_REFERENCE = re.compile(r"\$\{([^}]*)\}|\$\{")
_REFERENCE_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def expand_env_refs(data: Any, environ: Mapping[str, str]) -> tuple[Any, list[str]]:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string value of ``data``.

    Returns the expanded copy and one problem line per unset variable or malformed reference.
    As in the shell, the default applies when the variable is unset or empty. Substituted text
    is not expanded again, so a secret containing ``${`` arrives intact.
    """
    problems: list[str] = []

    def expand(text: str, loc: Loc) -> str:
        def substitute(match: re.Match[str]) -> str:
            body = _REFERENCE_BODY.fullmatch(match[1]) if match[1] is not None else None
            if body is None:
                problems.append(
                    f"{render_loc(loc)}: malformed reference (use ${{NAME}} or ${{NAME:-default}})"
                )
                return ""
            value = environ.get(body["name"])
            if body["default"] is not None and not value:
                return body["default"]
            if value is None:
                problems.append(
                    f"{render_loc(loc)}: environment variable {body['name']} is not set"
                )
                return ""
            return value

        return _REFERENCE.sub(substitute, text)

    def walk(value: Any, loc: Loc) -> Any:
        if isinstance(value, str):
            return expand(value, loc)
        if isinstance(value, dict):
            return {k: walk(v, (*loc, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(value)]
        return value

    return walk(data, ()), problems
