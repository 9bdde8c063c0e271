"""Request-body parsing and field validation that answers 400 JSON, never 500."""
from __future__ import annotations

import json
import re
from typing import Any

from pyramid.httpexceptions import HTTPNotFound

EMAIL_RE = re.compile(r"^[^@\s\"(),:;<>\[\\\]]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
NAME_MAX = 100
TEXT_MAX = 10_000
CHOICES_MIN, CHOICES_MAX, CHOICE_MAX = 2, 10, 500
POSITION_MAX = 100_000
DB_INT_MAX = 2**31 - 1


def has_surrogate(value: str) -> bool:
    """True when ``value`` holds a lone UTF-16 surrogate (JSON's ``"\\ud800"``), which
    no UTF-8 encoder, database or password hasher accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


SURROGATE_MESSAGE = "must not contain lone UTF-16 surrogates (invalid Unicode)"


class ValidationFailed(Exception):
    """400: ``message`` plus per-field ``errors`` ({field: message})."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


def json_object(request) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`ValidationFailed`."""
    body = request.body
    if not body.strip():
        raise ValidationFailed("the request body must be a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed(f"malformed JSON: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise ValidationFailed(f"the request body must be a JSON object, not {_json_type(data)}")
    return data


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """Collects per-field errors; :meth:`done` raises them all at once."""

    def __init__(self, data: dict[str, Any], allowed: tuple[str, ...] | None = None) -> None:
        self.data = data
        self.errors: dict[str, str] = {}
        if allowed is not None:
            for name in data:
                if name not in allowed:
                    key = str(name)[:100]
                    if has_surrogate(key):  # name the field as the client can read it back
                        key = key.encode("utf-8", "backslashreplace").decode("ascii")
                    self.errors[key] = f"unknown field; allowed: {', '.join(allowed)}"

    def _get(self, name: str, required: bool) -> tuple[bool, Any]:
        if name not in self.data:
            if required:
                self.errors[name] = "this field is required"
            return False, None
        return True, self.data[name]

    def string(self, name: str, *, required: bool = True, min_length: int = 1,
               max_length: int = 1000, strip: bool = True) -> str | None:
        present, value = self._get(name, required)
        if not present:
            return None
        if not isinstance(value, str):
            self.errors[name] = f"must be a string, not {_json_type(value)}"
            return None
        if strip:
            value = value.strip()
        if len(value) < min_length:
            self.errors[name] = ("must not be empty" if min_length == 1
                                 else f"must be at least {min_length} characters")
            return None
        if len(value) > max_length:
            self.errors[name] = f"must be at most {max_length} characters"
            return None
        if "\x00" in value:
            self.errors[name] = "must not contain NUL characters"
            return None
        if has_surrogate(value):
            self.errors[name] = SURROGATE_MESSAGE
            return None
        return value

    def email(self, name: str = "email") -> str | None:
        value = self.string(name, max_length=254)
        if value is None:
            return None
        local, _, _domain = value.rpartition("@")
        if not EMAIL_RE.match(value) or len(local) > 64:
            self.errors[name] = "must be a valid email address"
            return None
        return value.lower()

    def integer(self, name: str, *, required: bool = True, minimum: int = 1,
                maximum: int = POSITION_MAX) -> int | None:
        present, value = self._get(name, required)
        if not present:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.errors[name] = f"must be an integer, not {_json_type(value)}"
            return None
        if not minimum <= value <= maximum:
            self.errors[name] = f"must be between {minimum} and {maximum}"
            return None
        return value

    def string_list(self, name: str, *, required: bool = True, min_items: int = CHOICES_MIN,
                    max_items: int = CHOICES_MAX, max_length: int = CHOICE_MAX) -> list[str] | None:
        present, value = self._get(name, required)
        if not present:
            return None
        if not isinstance(value, list):
            self.errors[name] = f"must be an array of strings, not {_json_type(value)}"
            return None
        if not min_items <= len(value) <= max_items:
            self.errors[name] = f"must have between {min_items} and {max_items} items"
            return None
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.errors[name] = f"item {i} must be a string, not {_json_type(item)}"
                return None
            item = item.strip()
            if not item:
                self.errors[name] = f"item {i} must not be empty"
                return None
            if has_surrogate(item):
                self.errors[name] = f"item {i}: {SURROGATE_MESSAGE}"
                return None
            if len(item) > max_length or "\x00" in item:
                self.errors[name] = (f"item {i} must be at most {max_length} characters "
                                     "without NUL characters")
                return None
            out.append(item)
        return out

    def done(self, message: str = "invalid request") -> None:
        if self.errors:
            raise ValidationFailed(message, self.errors)


def path_id(request, name: str) -> int:
    """A matchdict id as an int; ids the database cannot hold are simply not found."""
    raw = request.matchdict.get(name, "")
    if not raw.isdigit() or int(raw) > DB_INT_MAX:
        raise HTTPNotFound(f"no such {name[:-2] if name.endswith('Id') else name}")
    return int(raw)
