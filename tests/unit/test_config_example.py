"""config.example.toml is the reference for every key: it loads as it stands, each commented
example works where it stands once uncommented, and every key the schema accepts appears in it.

The convention that tells an example from prose: a commented example line is ``# `` (hash, one
space) followed by a table header (``# [daemon]``, ``# [[mirrors]]``) or a key and ``=``
(``# pull_reserve = 10``). Consecutive example lines are one block, uncommented together.
Prose never starts that way.
"""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from mirror.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
TEXT = EXAMPLE.read_text()

_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
EXAMPLE_LINE = re.compile(rf"^# (?:\[|{_KEY}(?:\s*\.\s*{_KEY})*\s*=)")

Shape = Literal["table", "keyed", "listed"]


# --- reading the example -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Consecutive commented example lines: ``lines[start:stop]`` of the file (0-based)."""

    start: int
    stop: int

    def __str__(self) -> str:
        first, last = self.start + 1, self.stop
        return f"line {first}" if first == last else f"lines {first}-{last}"


def example_blocks(text: str) -> list[Block]:
    """Every block of commented example lines in ``text``, in file order."""
    blocks: list[Block] = []
    start: int | None = None
    lines = text.splitlines()
    for index, line in enumerate([*lines, ""]):
        if EXAMPLE_LINE.match(line):
            start = index if start is None else start
        elif start is not None:
            blocks.append(Block(start, index))
            start = None
    return blocks


def uncommented(text: str, block: Block) -> list[str]:
    """The lines of ``text`` with ``block``'s lines uncommented in place."""
    lines = text.splitlines()
    for index in range(block.start, block.stop):
        lines[index] = lines[index].removeprefix("# ")
    return lines


def block_document(text: str, block: Block) -> dict[str, Any]:
    """What ``block`` adds, nested where it stands: the table headers before it, then its lines.

    Raises ``tomllib.TOMLDecodeError`` when the file with the block uncommented is not TOML.
    """
    lines = uncommented(text, block)
    tomllib.loads("\n".join(lines))
    headers = [line for line in lines[: block.start] if line.lstrip().startswith("[")]
    return tomllib.loads("\n".join([*headers, *lines[block.start : block.stop]]))


# --- the schema, walked through its models -----------------------------------------------------


def held_model(annotation: Any) -> tuple[Shape, type[BaseModel]] | None:
    """The model a field holds, and how: as one table, keyed by name (a dict), or listed."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return held_model(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return held_model(present[0]) if len(present) == 1 else None
    if origin in (dict, list):
        inner = held_model(get_args(annotation)[-1])
        if inner is None or inner[0] != "table":
            return None
        return ("keyed" if origin is dict else "listed", inner[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("table", annotation)
    return None


def fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys ``model`` accepts in TOML, each with its field."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def schema_keys(model: type[BaseModel] = Config) -> set[tuple[type[BaseModel], str]]:
    """Every (model, key) the config accepts, through every nested model."""
    found: set[tuple[type[BaseModel], str]] = set()
    for key, info in fields(model).items():
        found.add((model, key))
        held = held_model(info.annotation)
        if held is not None:
            found |= schema_keys(held[1])
    return found


def keys_in(
    data: dict[str, Any], model: type[BaseModel] = Config, where: str = ""
) -> Iterator[tuple[type[BaseModel], str, str]]:
    """Each key of ``data`` with the model it sits in and its dotted place in the file."""
    for key, value in data.items():
        place = f"{where}.{key}" if where else key
        yield model, key, place
        info = fields(model).get(key)
        held = held_model(info.annotation) if info is not None else None
        if held is None:
            continue
        shape, inner = held
        if shape == "table" and isinstance(value, dict):
            yield from keys_in(value, inner, place)
        elif shape == "keyed" and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, dict):
                    yield from keys_in(item, inner, f'{place}."{name}"')
        elif shape == "listed" and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from keys_in(item, inner, f"{place}[{index}]")


def example_problems(text: str, block: Block) -> list[str]:
    """Why uncommenting ``block`` in place is wrong: not TOML, or keys the schema refuses there."""
    try:
        document = block_document(text, block)
    except tomllib.TOMLDecodeError as exc:
        return [f"not valid TOML once uncommented: {exc}"]
    return [
        f"{place}: not a key the config accepts there"
        for model, key, place in keys_in(document)
        if key not in fields(model)
    ]


def documented_keys(text: str) -> set[tuple[type[BaseModel], str]]:
    """Every (model, key) the text sets, actively or in a commented example."""
    documents = [tomllib.loads(text)]
    for block in example_blocks(text):
        try:
            documents.append(block_document(text, block))
        except tomllib.TOMLDecodeError:
            continue  # reported by the test of that block
    return {(model, key) for document in documents for model, key, _ in keys_in(document)}


def set_password_variables(monkeypatch: pytest.MonkeyPatch, document: dict[str, Any]) -> None:
    for settings in document.get("registries", {}).values():
        if "password_env" in settings:
            monkeypatch.setenv(settings["password_env"], "a-token-from-the-environment")


# --- the example ---------------------------------------------------------------------------------


def test_the_example_loads_as_it_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    set_password_variables(monkeypatch, tomllib.loads(TEXT))

    config = load_config(EXAMPLE)

    assert config.registries, "the example shows per-registry settings"
    assert config.mirrors, "the example shows [[mirrors]] entries"


@pytest.mark.parametrize("block", example_blocks(TEXT), ids=str)
def test_each_commented_example_works_where_it_stands(block: Block) -> None:
    assert example_problems(TEXT, block) == []


def test_every_key_the_schema_accepts_is_documented() -> None:
    missing = schema_keys() - documented_keys(TEXT)

    assert sorted(f"{model.__name__}.{key}" for model, key in missing) == []


def test_the_environment_overrides_work_as_the_header_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = tomllib.loads(TEXT)
    set_password_variables(monkeypatch, document)
    monkeypatch.setenv("MIRROR_DAEMON__LISTEN", "0.0.0.0:9755")
    monkeypatch.setenv("MIRROR_REGISTRIES", '{"registry.local:5000": {"insecure": false}}')
    monkeypatch.setenv("MIRROR_MIRRORS", '[{"source": "alpine"}]')

    config = load_config(EXAMPLE)

    assert config.daemon.listen == "0.0.0.0:9755"
    assert config.daemon.log_format == document["daemon"]["log_format"], "the rest of [daemon]"
    assert config.registry("registry.local:5000").insecure is False
    hub = document["registries"]["docker.io"]
    assert config.registry("docker.io").username == hub["username"], "a table merges key by key"
    assert [entry.source for entry in config.mirrors] == ["alpine"], "a list replaces the file's"


# --- the checks themselves -----------------------------------------------------------------------


def test_prose_is_not_taken_for_an_example() -> None:
    text = (
        "# Default: 0.\n"
        "#   allow / deny   regular expressions\n"
        "# Changes to [daemon] take effect at a restart.\n"
        "# Set MIRROR_DAEMON__LISTEN=0.0.0.0:9755 in a container.\n"
        "# pull_reserve = 10\n"
        '# [registries."docker.io"]\n'
    )

    assert example_blocks(text) == [Block(4, 6)]


def test_an_example_that_redeclares_its_table_is_refused() -> None:
    text = (
        '[registries."docker.io"]\n'
        'username = "someone"\n'
        "# A reserve of pulls for people.\n"
        '# [registries."docker.io"] pull_reserve = 10\n'
    )
    [block] = example_blocks(text)

    [problem] = example_problems(text, block)

    assert "Cannot declare" in problem


def test_an_example_key_is_checked_against_the_table_it_stands_in() -> None:
    text = (
        '[registries."docker.io"]\n'
        "# pull_reserve = 10\n"
        "\n"
        "[daemon]\n"
        "# pull_reserve = 10\n"
        "\n"
        "[[mirrors]]\n"
        'source = "diamol/golang"\n'
        "[mirrors.tags]\n"
        "# newest = 3\n"
        "# newst = 3\n"
    )
    blocks = example_blocks(text)

    assert [example_problems(text, block) for block in blocks] == [
        [],
        ["daemon.pull_reserve: not a key the config accepts there"],
        ["mirrors[0].tags.newst: not a key the config accepts there"],
    ]


def test_a_field_added_to_a_nested_model_is_a_key_to_document() -> None:
    class Inner(BaseModel):
        depth: int = 0

    class Outer(BaseModel):
        by_name: dict[str, Inner] = Field(default_factory=dict)
        listed: list[Inner] | None = None

    assert schema_keys(Outer) == {(Outer, "by_name"), (Outer, "listed"), (Inner, "depth")}
