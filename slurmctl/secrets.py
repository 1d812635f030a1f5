"""Secrets in params (docs/architecture.md, invariant 8).

A job definition names secrets by reference, `${NAME}` (an environment variable) or `${file:PATH}`,
and only workers resolve them, at run time, so no resolved value is ever written to a manifest, a
state record, a log or an error message. A literal value under a secret-like name is refused at
submit. `$${` stands for a literal `${`.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from slurmctl.errors import ConfigError, UserError

SECRET_NAME_RE = re.compile(
    r"token|secret|passw(?:or)?d|key|webhook|credential|authorization", re.IGNORECASE
)
QUANTITY_NAME_RE = re.compile(
    r"(?:^|[_\W])(?:max|min|num|n|count|total|limit|size|len|length|per|ttl|timeout)(?:[_\W]|$)"
    r"|(?:tokens|keys|secrets|passwords|credentials)(?:[_\W]|$)",
    re.IGNORECASE,
)
"""A secret-like name that counts something (`max_tokens`, `key_size`): a number under it is a
quantity, not a secret."""
_TOKEN_RE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYNTAX_HINT = "write ${NAME}, ${file:PATH}, or $${ for a literal ${"

PathParts = tuple[str | int, ...]


class ParamsError(ConfigError):
    """A problem at one place in params; `path` lets the loader point at the YAML line."""

    def __init__(self, where: str, path: PathParts, reason: str) -> None:
        super().__init__(f"{format_path(where, path)}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class _Ref:
    kind: str  # "env" or "file"
    target: str

    def __str__(self) -> str:
        return "${" + self.target + "}" if self.kind == "env" else "${file:" + self.target + "}"


class _Malformed(ValueError):
    pass


def format_path(where: str, path: PathParts) -> str:
    """'params', ('headers', 0) -> 'params.headers[0]'."""
    out = where
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse(text: str) -> list[str | _Ref]:
    """Split a string into literal pieces and references; raises _Malformed on a bad `${`."""
    parts: list[str | _Ref] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        parts.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == "$${":
            parts.append("${")
            continue
        body, closed = m.group(1), m.group(2)
        if not closed:
            raise _Malformed(f"unclosed reference '${{'; {_SYNTAX_HINT}")
        if body.startswith("file:") and len(body) > len("file:"):
            parts.append(_Ref("file", body[len("file:") :]))
        elif _NAME_RE.fullmatch(body):
            parts.append(_Ref("env", body))
        else:
            raise _Malformed(f"malformed reference (names: letters, digits, '_'); {_SYNTAX_HINT}")
    parts.append(text[pos:])
    return [p for p in parts if p != ""]


def _strings(value: Any, path: PathParts = ()) -> Iterator[tuple[PathParts, str]]:
    """Every string in a nested structure, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _scalars(value: Any, path: PathParts = ()) -> Iterator[tuple[PathParts, Any]]:
    """Every scalar (not a mapping or a list) in a nested structure, with its path."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _scalars(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _scalars(item, (*path, index))
    else:
        yield path, value


def _quantity(path: PathParts) -> bool:
    keys = [p for p in path if isinstance(p, str)]
    return bool(keys) and QUANTITY_NAME_RE.search(keys[-1]) is not None


def _suggested_name(path: PathParts) -> str:
    keys = [p for p in path if isinstance(p, str)]
    name = re.sub(r"\W", "_", keys[-1] if keys else "SECRET").upper()
    return "_" + name if name[:1].isdigit() else name


def check_no_literal_secrets(params: Mapping[str, Any], where: str = "params") -> None:
    """Refuse a literal under a secret-like name (and malformed references anywhere).

    A string counts as a reference when it contains at least one `${NAME}` / `${file:PATH}`, so
    `"Bearer ${TOKEN}"` is accepted. Any other scalar under a secret-like name is refused too
    (YAML reads `api_key: 8412763395561230` as a number just as readily), except a boolean or
    null, which carry no secret, and a number under a name that counts (`max_tokens: 100`).
    The message never contains the value.
    """
    for path, value in _scalars(params):
        secret_like = any(isinstance(p, str) and SECRET_NAME_RE.search(p) for p in path)
        if isinstance(value, str):
            try:
                parts = _parse(value)
            except _Malformed as exc:
                raise ParamsError(where, path, str(exc)) from None
            if not secret_like or not value.strip() or any(isinstance(p, _Ref) for p in parts):
                continue
            kind = ""
        elif value is None or isinstance(value, bool) or not secret_like or _quantity(path):
            continue
        else:
            kind = (
                " (a number)" if isinstance(value, int | float) else f" (a {type(value).__name__})"
            )
        name = _suggested_name(path)
        raise ParamsError(
            where,
            path,
            f'looks like a secret written literally{kind}; write "${{{name}}}" and export {name} '
            'in the workers\' environment (or "${file:/path}")',
        )


def _read_secret_file(target: str, base_dir: Path | None) -> str:
    path = Path(target).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    text = path.read_text(encoding="utf-8")
    return text.rstrip("\r\n")


def _lookup(ref: _Ref, env: Mapping[str, str], base_dir: Path | None, where: str) -> str:
    if ref.kind == "env":
        if ref.target not in env:
            msg = f"{where}: environment variable {ref.target} is not set (needed by {ref})"
            raise UserError(msg)
        return env[ref.target]
    try:
        return _read_secret_file(ref.target, base_dir)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        msg = f"{where}: cannot read secret file {ref.target} (needed by {ref}): {reason}"
        raise UserError(msg) from None


def _resolve(
    value: Any, env: Mapping[str, str], base_dir: Path | None, where: str, found: list[str] | None
) -> Any:
    if isinstance(value, str):
        try:
            parts = _parse(value)
        except _Malformed as exc:
            raise UserError(f"{where}: {exc}") from None
        out = []
        for part in parts:
            if isinstance(part, _Ref):
                resolved = _lookup(part, env, base_dir, where)
                if found is not None:
                    found.append(resolved)
                out.append(resolved)
            else:
                out.append(part)
        return "".join(out)
    if isinstance(value, Mapping):
        return {
            k: _resolve(v, env, base_dir, format_path(where, (k,)), found) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [
            _resolve(v, env, base_dir, format_path(where, (i,)), found) for i, v in enumerate(value)
        ]
        return tuple(items) if isinstance(value, tuple) else items
    return copy.deepcopy(value)


def resolve(
    value: Any,
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
    where: str = "params",
) -> Any:
    """A deep copy with every reference replaced; only workers call this, at run time.

    `${file:PATH}` reads the file (relative paths from base_dir when given), trailing newlines
    stripped. A missing variable or file raises UserError naming the reference, never a value.
    """
    return _resolve(value, os.environ if env is None else env, base_dir, where, None)


def collect_secret_values(
    value: Any, env: Mapping[str, str] | None = None, *, base_dir: Path | None = None
) -> list[str]:
    """Every value a reference resolves to (unset ones skipped), to redact from logs and errors."""
    env = os.environ if env is None else env
    values: list[str] = []
    for _path, text in _strings(value):
        try:
            refs = [p for p in _parse(text) if isinstance(p, _Ref)]
        except _Malformed:
            continue
        for ref in refs:
            try:
                resolved = _lookup(ref, env, base_dir, "params")
            except UserError:
                continue
            if resolved and resolved not in values:
                values.append(resolved)
    return values


def redact(text: str, secrets: Sequence[str]) -> str:
    """Replace each secret (and each long line of a multi-line one) with `***`."""
    needles = {s for s in secrets if len(s) >= 4}
    for secret in list(needles):
        needles.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= 8)
    for needle in sorted(needles, key=len, reverse=True):
        text = text.replace(needle, "***")
    return text


def redact_uncaught(secrets: Sequence[str]) -> None:
    """An exception nobody caught (in the worker's main thread or any other) is printed with the
    resolved secrets replaced by `***`: Python's own traceback printer knows nothing of them."""
    hidden = list(secrets)

    def show(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(redact(text, hidden))

    def show_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            show(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = show
    threading.excepthook = show_thread


def unresolved_refs(
    value: Any, env: Mapping[str, str] | None = None, *, base_dir: Path | None = None
) -> list[str]:
    """References that cannot be resolved here: variable names, and `file:PATH` for files.

    submit only warns about them: the workers' environment may differ from the submitter's.
    """
    env = os.environ if env is None else env
    missing: list[str] = []
    for _path, text in _strings(value):
        try:
            refs = [p for p in _parse(text) if isinstance(p, _Ref)]
        except _Malformed:
            continue
        for ref in refs:
            label = ref.target if ref.kind == "env" else f"file:{ref.target}"
            try:
                _lookup(ref, env, base_dir, "params")
            except UserError:
                if label not in missing:
                    missing.append(label)
    return missing


def referenced_names(value: Any) -> list[str]:
    """Every environment variable name referenced, in order of first use."""
    names: list[str] = []
    for _path, text in _strings(value):
        try:
            parts = _parse(text)
        except _Malformed:
            continue
        for part in parts:
            if isinstance(part, _Ref) and part.kind == "env" and part.target not in names:
                names.append(part.target)
    return names
