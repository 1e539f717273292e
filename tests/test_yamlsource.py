"""Strict YAML: safe, YAML 1.2 booleans and numbers, duplicate keys, size and alias limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.format.yamlsource import load_yaml


def data(text: str) -> object:
    document, issues = load_yaml(text, "f.yaml")
    assert issues == [] and document is not None
    return document.data


@pytest.mark.parametrize("word", ["NO", "no", "yes", "Yes", "on", "OFF", "y", "n"])
def test_yaml11_booleans_stay_strings(word: str) -> None:
    assert data(f"v: {word}") == {"v": word}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("42", 42),
                                             ("-3", -3), ("2.5", 2.5), ("1e3", 1000.0),
                                             ("null", None), ("~", None)])
def test_yaml12_core_scalars(text: str, value: object) -> None:
    assert data(f"v: {text}") == {"v": value}


@pytest.mark.parametrize("text", ["1:30", "007", "2024-01-01", "10%", "0b101"])
def test_yaml11_only_forms_stay_strings(text: str) -> None:
    assert data(f"v: {text}") == {"v": text}


def test_syntax_error_has_one_based_position() -> None:
    document, issues = load_yaml("a: [1, 2\nb: 3\n", "f.yaml")
    assert document is None
    assert [str(i) for i in issues] == [
        "f.yaml:2:2: YAML error: expected ',' or ']', but got ':' (while parsing a flow sequence)"]


def test_duplicate_key_is_reported_at_the_second_key() -> None:
    _, issues = load_yaml("a:\n  b: 1\n  c: 2\n  b: 3\n", "f.yaml")
    assert [str(i) for i in issues] == ["f.yaml:4:3: a.b: duplicate key 'b' (first at line 2)"]


def test_unsafe_tags_are_refused() -> None:
    document, issues = load_yaml("a: !!python/object/apply:os.system [ls]\n", "f.yaml")
    assert document is None
    assert "could not determine a constructor" in issues[0].message
    assert (issues[0].location.line, issues[0].location.column) == (1, 4)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    document, issues = load_yaml("\n".join(lines), "f.yaml")
    assert document is None
    assert "alias bomb" in issues[0].message


def test_small_aliases_are_fine() -> None:
    assert data("base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


def test_source_map_points_at_keys_values_and_falls_back_to_parents() -> None:
    document, _ = load_yaml("when:\n  - total: { gt: 1 }\n", "f.yaml")
    assert document is not None
    smap = document.source_map
    assert str(smap.locate(("when", 0, "total"), "key")) == "f.yaml:2:5"
    assert str(smap.locate(("when", 0, "total", "gt"))) == "f.yaml:2:18"
    assert str(smap.locate(("when", 0, "total", "missing"))) == "f.yaml:2:12"


def test_multiple_documents_are_refused() -> None:
    document, issues = load_yaml("a: 1\n---\nb: 2\n", "f.yaml")
    assert document is None
    assert "single document" in issues[0].message


def test_libyaml_and_python_parsers_read_every_playbook_alike() -> None:
    """The fast (libyaml) loader must read exactly what the pure-Python StrictLoader reads."""
    import yaml

    from engine.format.yamlsource import StrictLoader, _FastLoader

    repo = Path(__file__).resolve().parent.parent
    files = [*repo.glob("playbooks/*.yaml"), *repo.glob("tests/fixtures/playbooks/**/*.yaml")]
    text = "\n".join(["a: NO", "b: yes", "c: 1:30", "d: 2024-01-01", "e: 0x1F", "f: .inf",
                      "g: 1e3", "h: ~", "i: on", "j: 010"])
    sources = [text] + [f.read_text() for f in files]
    read = 0
    for source in sources:
        try:
            slow = yaml.load(source, Loader=StrictLoader)
        except yaml.YAMLError:
            continue
        assert yaml.load(source, Loader=_FastLoader) == slow
        read += 1
    assert read > 10
    assert yaml.load(text, Loader=_FastLoader)["a"] == "NO"
