"""How a schema maps to JSON and back: one frozen dataclass per resource, whose fields *are* the wire format.

A schema class lists the keys of one JSON object, in the order the server writes them, each with its Python
type; :meth:`Schema.from_json` reads a parsed JSON document into it and :meth:`Schema.to_json` writes it back.
The types a field may have are the few the control API uses: ``str``, ``int``, ``float``, ``bool``,
``datetime`` (ISO 8601 on the wire, :mod:`cargohold.isotime`), ``X | None``, ``list[X]``, ``dict[str, X]``, another
schema, and ``Any`` for free-form JSON (an audit event's ``detail``).

**Strict about what it knows.** A key the schema declares must be present (unless declared with
:func:`optional_key`: the server sends it only sometimes, like a page's ``next``) and must have the declared
type: a string where a number belongs, ``true`` where a count belongs (``bool`` is not an ``int`` here), or a
``null`` where no ``None`` is allowed is a :class:`SchemaError` naming the path, never a value of the wrong type
travelling on into the CLI.

**Tolerant of what it does not know.** A key the schema does not declare is not an error: a newer server may
add fields, and an older client must keep working against it. Such keys are kept, in
:attr:`Schema.wire_extra`, and written back by :meth:`Schema.to_json` in the position they arrived, so that
``to_json(from_json(x)) == x`` — key order included — for anything a server sends. That is what lets the CLI's
``--json`` print ``to_json()`` and stay byte-for-byte what the server said. :meth:`Schema.unread` lists the
kept keys, which is how the contract test proves a schema describes its route completely.

Why not pydantic or cattrs: this package is imported by the client-only install (the actions' hash-locked
virtualenv), and a hundred lines of standard library cover the handful of types above.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import datetime
from typing import Any, ClassVar, Self, Union

from cargohold.isotime import format_iso, parse_iso

_OPTIONAL_KEY = "cargohold.schemas.optional_key"
_BOOKKEEPING = frozenset({"wire_extra", "wire_order"})


class SchemaError(ValueError):
    """A JSON document does not have its schema's shape; the message names the path and what is wrong."""


def optional_key() -> Any:
    """A field whose key the server sends only sometimes (``registry`` on some project answers, a page's
    ``next``): ``None`` when absent, and absent again in :meth:`Schema.to_json` unless it was sent."""
    return dataclasses.field(default=None, metadata={_OPTIONAL_KEY: True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schema:
    """Base of every wire object (see the module docstring). Subclasses are ``@dataclass(frozen=True)``."""

    wire_extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """Keys this version does not declare, exactly as received (a newer server's additions)."""
    wire_order: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)
    """The keys in the order they arrived (empty for an object built in code: declaration order is used)."""

    _fields_cache: ClassVar[dict[type, list[tuple[str, Any, bool]]]] = {}

    @classmethod
    def from_json(cls, data: Any, *, path: str | None = None) -> Self:
        """Read a parsed JSON object; raises :class:`SchemaError` for a missing key or a value of the wrong type."""
        return typing.cast(Self, _read_object(cls, data, path or cls.__name__))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the received key order and unknown keys when it was read, else declaration order."""
        declared = {name: optional for name, _, optional in _fields(type(self))}
        out: dict[str, Any] = {}
        for key in self.wire_order:
            if key in declared:
                out[key] = _write(getattr(self, key))
            elif key in self.wire_extra:
                out[key] = self.wire_extra[key]
        for name, optional in declared.items():
            if name not in out and not (optional and getattr(self, name) is None):
                out[name] = _write(getattr(self, name))
        for key, value in self.wire_extra.items():
            out.setdefault(key, value)
        return out

    def unread(self, path: str | None = None) -> list[str]:
        """Every key, at any depth, that was received but is not declared by its schema (``Build.foo``,
        ``BuildPage.builds[0].bar``): empty when the schemas describe a document completely."""
        here = path or type(self).__name__
        found = [f"{here}.{key}" for key in self.wire_extra]
        for name, _, _ in _fields(type(self)):
            found.extend(_unread(getattr(self, name), f"{here}.{name}"))
        return found


def _fields(cls: type) -> list[tuple[str, Any, bool]]:
    """``(name, resolved type, optional key?)`` of a schema's declared fields, in order (cached per class)."""
    cached = Schema._fields_cache.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls)
        cached = [
            (f.name, hints[f.name], bool(f.metadata.get(_OPTIONAL_KEY)))
            for f in dataclasses.fields(cls)
            if f.name not in _BOOKKEEPING
        ]
        Schema._fields_cache[cls] = cached
    return cached


def _read_object(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{path} must be a JSON object, not {_kind(data)}")
    values: dict[str, Any] = {}
    for name, hint, optional in _fields(cls):
        if name in data:
            values[name] = _read(hint, data[name], f"{path}.{name}")
        elif not optional:
            raise SchemaError(f"{path} has no {name!r}")
    declared = {name for name, _, _ in _fields(cls)}
    extra = {key: value for key, value in data.items() if key not in declared}
    return cls(**values, wire_extra=extra, wire_order=tuple(data))


def _read(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) != 1:
            raise TypeError(f"{path}: only X | None unions are supported in schemas")
        return _read(options[0], value, path)
    if value is None:
        raise SchemaError(f"{path} must not be null")
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{path} must be a list, not {_kind(value)}")
        (item,) = typing.get_args(hint)
        return [_read(item, element, f"{path}[{i}]") for i, element in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path} must be a JSON object, not {_kind(value)}")
        _, item = typing.get_args(hint)
        return {key: _read(item, element, f"{path}.{key}") for key, element in value.items()}
    if isinstance(hint, type) and issubclass(hint, Schema):
        return _read_object(hint, value, path)
    if hint is datetime:
        if not isinstance(value, str):
            raise SchemaError(f"{path} must be an ISO 8601 time, not {_kind(value)}")
        try:
            return parse_iso(value)
        except ValueError:
            raise SchemaError(f"{path} must be an ISO 8601 time, not {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{path} must be true or false, not {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path} must be an integer, not {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{path} must be a number, not {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{path} must be a string, not {_kind(value)}")
        return value
    raise TypeError(f"{path}: schemas cannot hold a {hint!r}")


def _write(value: Any) -> Any:
    if isinstance(value, Schema):
        return value.to_json()
    if isinstance(value, datetime):
        return format_iso(value)
    if isinstance(value, list):
        return [_write(item) for item in value]
    if isinstance(value, dict):
        return {key: _write(item) for key, item in value.items()}
    return value


def _unread(value: Any, path: str) -> list[str]:
    if isinstance(value, Schema):
        return value.unread(path)
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _unread(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _unread(item, f"{path}.{key}")]
    return []


def _kind(value: Any) -> str:
    """How an unexpected JSON value is named in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


__all__ = ["Schema", "SchemaError", "optional_key"]
