"""Keep a large file in a git repository's history without putting it in its tree.

A built world is lost with its machine: only the ``main`` branch of this repository survives one (its checkout is
made anew from ``main`` alone, side branches and ignored files gone), and rebuilding the tag world takes two of a
session's three hours on two cores. Its 82 MiB artifact cannot sit in the tree either: the working tree is what
travels to a device machine. So the file is split into parts, committed as an orphan commit that holds nothing else,
and that commit is made the second parent of a commit on the current branch whose tree adds only a small pointer
file (the orphan's id, the file's size and sha256). Every clone of the branch carries the parts; no checkout holds
them; ``unshelve`` joins them again and checks the sha256.

Each new file shelved adds its size to the repository for good: shelve a world when it changes, not every session.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

# GitHub warns at 50 MB a file and refuses 100 MB: parts stay under both
PART_BYTES = 40 * 2**20


def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def in_repo(repo: Path, path: Path) -> Path:
    """A path as given when absolute, else relative to the repository (not to the working directory)."""
    path = Path(path)
    return path if path.is_absolute() else Path(repo) / path


def _part_names(name: str, count: int) -> list[str]:
    return [f"{name}.part{i:02d}" for i in range(count)]


def shelve(repo: Path, file: Path, pointer: Path, message: str, part_bytes: int = PART_BYTES) -> str:
    """Commit ``file`` into the history of ``repo``'s current branch, outside its tree, and ``pointer`` (a path in
    the repository) as the record that finds it. Returns the new branch head. Refuses when something is already
    staged, so the commit holds the pointer and nothing else."""
    repo, file, pointer = Path(repo), Path(file), Path(pointer)
    if _git(repo, "diff", "--cached", "--name-only").strip():
        raise RuntimeError("something is staged: commit or unstage it first, so the shelf's commit holds only its pointer")
    data = file.read_bytes()
    chunks = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)] or [b""]
    names = _part_names(file.name, len(chunks))
    lines = [f"100644 blob {_git(repo, 'hash-object', '-w', '--stdin', data=chunk).decode().strip()}\t{name}\n"
             for name, chunk in zip(names, chunks)]
    tree = _git(repo, "mktree", data="".join(lines).encode()).decode().strip()
    orphan = _git(repo, "commit-tree", tree, "-m", f"Shelved {file.name} ({len(data)} bytes), outside the tree"
                  ).decode().strip()
    record = {"commit": orphan, "name": file.name, "parts": names, "size": len(data),
              "sha256": hashlib.sha256(data).hexdigest()}
    pointer_path = in_repo(repo, pointer)
    pointer_path.parent.mkdir(parents=True, exist_ok=True)
    pointer_path.write_text(json.dumps(record, indent=1) + "\n")
    _git(repo, "add", "--", str(pointer_path))
    head = _git(repo, "rev-parse", "HEAD").decode().strip()
    tree = _git(repo, "write-tree").decode().strip()
    merged = _git(repo, "commit-tree", tree, "-p", head, "-p", orphan, "-m", message).decode().strip()
    # moves the checked-out branch, as `git commit` would; the index already matches the new tree
    _git(repo, "update-ref", "-m", f"shelve {file.name}", "HEAD", merged, head)
    return merged


def unshelve(repo: Path, pointer: Path, out: Path) -> Path:
    """Write the file ``pointer`` (a path in the repository) records to ``out``, from ``repo``'s objects, checked
    against its sha256."""
    record = json.loads(in_repo(repo, pointer).read_text())
    data = b"".join(_git(repo, "cat-file", "blob", f"{record['commit']}:{name}") for name in record["parts"])
    if len(data) != record["size"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise RuntimeError(f"the shelved {record['name']} in commit {record['commit']} is not the file {pointer} records")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
