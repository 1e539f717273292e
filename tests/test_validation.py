"""Playbook validation end to end: every bad input names file:line:column, all errors at once.

Expected messages are snapshots in tests/fixtures/playbooks/bad/*.expected (HA's
test_config.ambr style); regenerate with RETAIN_UPDATE_SNAPSHOTS=1 and review the diff.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.query.checks import load_playbooks

FIXTURES = Path(__file__).parent / "fixtures" / "playbooks"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))


def rendered_issues(paths: list[Path], env: dict[str, str] | None = None) -> str:
    result = load_playbooks(paths, env=env or {})
    return "".join(f"{issue}\n" for issue in result.issues)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_playbook_messages_match_snapshot(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    relative = path.relative_to(FIXTURES)
    text = rendered_issues([relative])
    expected = path.with_suffix(".expected")
    if os.environ.get("RETAIN_UPDATE_SNAPSHOTS") == "1":
        expected.write_text(text, encoding="utf-8")
    assert text, f"{path.name} should be rejected"
    assert text == expected.read_text(encoding="utf-8")


def test_every_issue_names_file_line_and_column(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    result = load_playbooks([Path("bad")], env={})
    assert result.issues and not result.playbooks
    for issue in result.issues:
        if issue.location.file.startswith("templates/"):  # template files: their own place
            assert issue.location.line >= 1 and issue.location.column >= 1, issue
            continue
        assert issue.location.file.startswith("bad/"), issue
        assert issue.location.line >= 1 and issue.location.column >= 1, issue


def test_many_errors_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    result = load_playbooks([Path("bad/many-errors.yaml")], env={})
    assert len(result.issues) >= 12


def test_good_playbooks_validate_and_keep_yaml11_words_as_strings() -> None:
    result = load_playbooks([FIXTURES / "good"], env={})
    assert result.issues == []
    norway = next(p for p in result.playbooks if p.id == "norway")
    first, second = norway.when.items[:2]
    assert first.value == "NO"  # type: ignore[union-attr]
    assert second.value == ("yes", "on", "off")  # type: ignore[union-attr]


def test_duplicate_ids_across_files_are_reported_at_the_second(tmp_path: Path) -> None:
    text = (FIXTURES / "good" / "minimal.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    result = load_playbooks([tmp_path], env={})
    assert [str(i) for i in result.issues] == [
        f"{tmp_path}/b.yaml:1:5: id: duplicate playbook id 'minimal' (also in {tmp_path}/a.yaml)"]
    assert [p.id for p in result.playbooks] == ["minimal"]


def test_oversized_file_is_refused_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("id: big\n" + "# padding\n" * 200_000)
    started = time.monotonic()
    result = load_playbooks([big], env={})
    assert time.monotonic() - started < 1.0
    assert [i.message for i in result.issues] == ["file is larger than 1,000,000 bytes; refused"]


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    result = load_playbooks([tmp_path / "nope.yaml", tmp_path], env={})
    assert sorted(i.message for i in result.issues) == [
        "no playbook files (*.yaml) here", "no such file or folder"]


def test_playbook_version_changes_with_content_not_comments(tmp_path: Path) -> None:
    """tests/test_versions.py covers templates; here only the document."""
    path = tmp_path / "p.yaml"
    path.write_text((FIXTURES / "good" / "minimal.yaml").read_text())
    first = load_playbooks([path], env={}).playbooks[0].version
    path.write_text(path.read_text() + "# a comment is not a new version\n")
    assert load_playbooks([path], env={}).playbooks[0].version == first
    path.write_text(path.read_text().replace("The smallest playbook", "The smallest one"))
    assert load_playbooks([path], env={}).playbooks[0].version != first
