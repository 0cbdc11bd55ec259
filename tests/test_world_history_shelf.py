"""A built world's artifact kept in the branch's history, outside its tree: a fresh clone of the branch alone (what
a new machine gets) gives the file back byte for byte, and no checkout carries it."""

import json
import os
import subprocess

import pytest

from bench.world import history_shelf


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_shelved_file_comes_back_from_a_fresh_clone_of_the_branch_and_is_in_no_tree(git_repo, tmp_path):
    repo = git_repo
    payload = os.urandom(250_000)
    (tmp_path / "world.tar").write_bytes(payload)
    before = git(repo, "rev-parse", "HEAD")
    head = history_shelf.shelve(repo, tmp_path / "world.tar", "bench/world.json", "Keep the world",
                                part_bytes=100_000)

    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "rev-parse", "HEAD^1") == before
    assert git(repo, "ls-tree", "-r", "--name-only", "HEAD").split() == ["README.md", "bench/world.json"]
    assert git(repo, "status", "--porcelain") == ""
    record = json.loads((repo / "bench/world.json").read_text())
    assert record["parts"] == ["world.tar.part00", "world.tar.part01", "world.tar.part02"]
    assert git(repo, "rev-parse", "HEAD^2") == record["commit"]

    # a new machine: a clone of main alone, with no other refs
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--single-branch", "--no-tags", str(repo), str(clone)], check=True)
    assert not any(p.name.startswith("world.tar") for p in clone.rglob("*") if ".git" not in p.parts)
    back = history_shelf.unshelve(clone, clone / "bench/world.json", tmp_path / "back" / "world.tar")
    assert back.read_bytes() == payload


def test_a_pointer_that_does_not_match_its_parts_is_refused(git_repo, tmp_path):
    repo = git_repo
    (tmp_path / "world.tar").write_bytes(b"abc" * 1000)
    history_shelf.shelve(repo, tmp_path / "world.tar", "world.json", "Keep it")
    record = json.loads((repo / "world.json").read_text())
    record["sha256"] = "0" * 64
    (repo / "world.json").write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match="is not the file"):
        history_shelf.unshelve(repo, repo / "world.json", tmp_path / "out.tar")


def test_shelving_refuses_when_something_else_is_staged(git_repo, tmp_path):
    repo = git_repo
    (tmp_path / "world.tar").write_bytes(b"x")
    (repo / "other.txt").write_text("staged\n")
    git(repo, "add", "other.txt")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(RuntimeError, match="something is staged"):
        history_shelf.shelve(repo, tmp_path / "world.tar", "world.json", "Keep it")
    assert git(repo, "rev-parse", "HEAD") == head
