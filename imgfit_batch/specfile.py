"""A spec from where it is written: read bounded from a file, stdin or a store, parsed as
YAML without aliases, `--set a.b=v` overrides applied to the same tree, then validated
as a JobSpec (imgfit_batch.spec, the schema), a failure said as one line that names the
field (`parse_spec`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from imgfit_batch import fieldpath
from imgfit_batch.errors import SpecError
from imgfit_batch.models import KINDS
from imgfit_batch.spec import JobSpec

MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; more is a mistake or an attack


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases: `*name` is how a few hundred bytes of YAML expand
    to gigabytes (billion laughs), and a spec has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor[:40]}) are not allowed in a spec; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _parse_yaml(text: str) -> Any:
    """YAML through the alias-free loader. Raises yaml.YAMLError, or ValueError for what
    PyYAML lets through (nesting deeper than Python's stack, integers of thousands of digits)."""
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _set_path(tree: dict, dotted: str, raw: str) -> None:
    if not all(fieldpath.split(dotted)):
        raise SpecError(f"--set {dotted}=...: not a field path (use a.b=value)")
    try:
        value = _parse_yaml(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):
        value = raw
    try:
        fieldpath.set_in(tree, dotted, value, create=True)
    except fieldpath.NotASection as exc:
        raise SpecError(f"--set {dotted}: {exc}") from None


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.epochs=5")
        dotted, raw = item.split("=", 1)
        _set_path(tree, dotted.strip(), raw)
    return tree


def field_path(loc: tuple) -> str:
    # pydantic puts the discriminator value in the location of union members; a hostile key can be huge
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in KINDS)]
    return fieldpath.join(*(p if len(p) <= 80 else p[:77] + "..." for p in parts)) or "spec"


def explain_error(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `imgfit-batch schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown kind {short_value(err['ctx'].get('tag'))}; expected one of {err['ctx'].get('expected_tags')}"
    if kind == "greater_than":
        return f"must be > {err['ctx']['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {err['ctx']['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {err['ctx']['le']}"
    if kind == "literal_error":
        return f"must be one of {err['ctx']['expected']}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    return f"{msg[0].lower()}{msg[1:]} (got {short_value(err.get('input'))})"


def short_value(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: error lines quote input, and input can be huge."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_spec(tree: Any, source: str = "spec") -> JobSpec:
    if not isinstance(tree, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping with at least `image` and `output`")
    try:
        spec = JobSpec.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {field_path(first['loc'])}: {explain_error(first)}{more}") from None
    return spec


def read_spec_text(source: str) -> str:
    """The spec's text, read bounded (MAX_SPEC_BYTES) from a file, stdin (`-`) or a store."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes where there is a buffer
        data = stream.read(MAX_SPEC_BYTES + 1)
    else:
        from imgfit_batch import storage

        data = storage.read_bytes(source, what="spec", max_bytes=MAX_SPEC_BYTES)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{_name(source)}: the spec is over {MAX_SPEC_BYTES >> 20} MiB; a spec is a short YAML file")
    if not isinstance(data, bytes):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # replacing the bytes would silently name another file
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{_name(source)}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the spec as UTF-8"
        ) from None


def _name(source: str) -> str:
    return "stdin" if source == "-" else source


def load_tree(source: str, overrides: Sequence[str] = ()) -> tuple[Any, str]:
    """The spec's YAML tree from a file, stdin (`-`) or a store, with the --set overrides
    applied, and the name errors give it. `imgfit_batch.study.load_spec` validates it."""
    from imgfit_batch import storage

    if source != "-":
        try:
            source = storage.check_uri(source, need_key=True)
        except ValueError as exc:
            raise SpecError(f"SPEC: {exc}") from None
    text = read_spec_text(source)
    try:
        tree = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{_name(source)}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except ValueError as exc:
        raise SpecError(f"{_name(source)}: not a valid spec ({str(exc)[:200]})") from None
    if tree is None:
        tree = {}
    if isinstance(tree, dict):
        apply_overrides(tree, list(overrides))
    return tree, _name(source)


def check_outside_output(spec: JobSpec, source: str) -> None:
    """The job writes its output location: a spec file inside it could be overwritten."""
    from imgfit_batch import storage

    if source not in ("-", "stdin") and storage.contains(spec.output, source):
        raise SpecError(
            f"{source}: output: {spec.output} contains this spec ({source}); the job writes there and "
            "could overwrite it: keep the spec outside the output location"
        )
