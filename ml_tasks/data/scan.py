"""Scanning a dataset for prepare: every entry of a folder or a version, each file's content hash.

A folder is listed whole folders at a time (``os.scandir``: file and folder told apart without a
``stat``); each entry that is not an image file prepare can read is set aside as
:class:`Skipped`, with a reason, and never opened: hidden files and folders, symbolic links that
lead out of the dataset folder, to a folder, nowhere or round in a loop, FIFOs, sockets and
devices. A link to a regular file inside the folder is read as that file. So every entry
offered is accounted for, and nothing outside the dataset folder reaches training or the lake.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ml_tasks.data.dvc import VersionFiles, VersionNotLocal
from ml_tasks.data.files import file_kind, read_regular_file
from ml_tasks.data.images import content_hash


@dataclass(frozen=True)
class Skipped:
    """An entry that is not an image file to read: what it is, and why it was left alone."""

    path: str
    reason: str
    detail: str


@dataclass
class Listing:
    """A dataset's files as (relative folder, sorted names or paths) groups in path order, and
    the entries set aside."""

    groups: list[tuple[str, list[str]]]
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class Scan:
    """Every file of a dataset (folder or version), in path order, with its content hash.

    ``hashes`` are sha256s in hex: they key the caches and decide the split. A folder's scan
    also keeps what its :class:`FileIndex` needs: each file's size, mtime and ids (the sha256
    followed by DVC's md5 of the file, which names it in a dataset version). ``groups`` are
    runs of rows that share a folder: (first row, end row, class label or None when the folder
    is not a class folder directly under the root). ``skipped``: files that could not be read.
    """

    rels: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    groups: list[tuple[int, int, str | None]] = field(default_factory=list)
    read: int = 0
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def link_verdict(path: str, root: str) -> tuple[str, str] | None:
    """Why the symbolic link ``path`` is not followed, or None when it leads to a regular file
    inside ``root`` (a resolved path), which is then read as that file."""
    target = os.readlink(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling_symlink", f"a link to {target}, which does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink_loop", f"a link to {target} that leads round in a loop"
        return "unreadable", f"a link to {target}: {exc.strerror}"
    real = os.path.realpath(path)
    if not real.startswith(root + os.sep):
        return "symlink_outside", f"a link to {real}, outside the dataset folder: not followed"
    if stat.S_ISDIR(mode):
        return "symlink_to_folder", f"a link to the folder {target}: not entered"
    if not stat.S_ISREG(mode):
        return "not_a_regular_file", f"a link to a {file_kind(mode)}: not opened"
    return None


def list_folder(folder: Path) -> Listing:
    """Every file under ``folder`` as (relative folder, sorted names), in path order, and the
    entries set aside (see the module's docstring): a hidden or linked folder is one entry.

    ``os.scandir`` directly: it tells files, folders and links apart without a ``stat`` and
    costs a third of ``os.walk``; only links are looked into.
    """
    folders: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    root = os.path.realpath(folder)

    def visit(path: str, rel_dir: str) -> None:
        names: list[str] = []
        with os.scandir(path) as entries:
            for entry in entries:
                name = entry.name
                if entry.is_file(follow_symlinks=False) and not name.startswith("."):
                    names.append(name)
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if name.startswith("."):
                    what = "folder: not entered" if entry.is_dir(follow_symlinks=False) else "file"
                    skipped.append(Skipped(rel, "hidden", f"a hidden {what}"))
                elif entry.is_dir(follow_symlinks=False):
                    visit(entry.path, rel)
                elif entry.is_symlink():
                    verdict = link_verdict(entry.path, root)
                    if verdict is None:
                        names.append(name)
                    else:
                        skipped.append(Skipped(rel, *verdict))
                else:
                    kind = file_kind(entry.stat(follow_symlinks=False).st_mode)
                    skipped.append(Skipped(rel, "not_a_regular_file", f"a {kind}: not opened"))
        if names:
            folders[rel_dir] = names

    visit(str(folder), "")
    skipped.sort(key=lambda item: item.path)
    return Listing(in_path_order(folders), skipped)


def list_version(rels: list[str]) -> Listing:
    """A version's paths as :func:`list_folder` groups them; files under a hidden file or
    folder (``.DS_Store`` and the like), which DVC records, set aside as a folder's are."""
    if "/." in "/" + "\n/".join(rels):  # the usual answer, without a loop
        hidden = [rel for rel in rels if "/." in f"/{rel}"]
        skipped = set(hidden)
        rels = [rel for rel in rels if rel not in skipped]
        return Listing(group_paths(rels), [Skipped(r, "hidden", "a hidden file") for r in hidden])
    return Listing(group_paths(rels))


def group_paths(rels: list[str]) -> list[tuple[str, list[str]]]:
    """:func:`list_folder`'s order for a list of relative paths (a dataset version's), with
    each group holding the paths themselves, not just the names."""
    folders: dict[str, list[str]] = {}
    for rel in rels:
        rel_dir = rel.rpartition("/")[0]
        if (group := folders.get(rel_dir)) is None:
            folders[rel_dir] = group = []
        group.append(rel)
    return in_path_order(folders)


def in_path_order(folders: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Folders and their sorted names (or paths), ordered so that the groups concatenated give
    the files sorted by path: a folder sorts by its name plus ``/``, a loose file by its name."""
    groups: list[tuple[str, str, list[str]]] = []  # (sort key, relative folder, names)
    for rel_dir, names in folders.items():
        names.sort()
        if rel_dir:
            groups.append((f"{rel_dir}/", rel_dir, names))
        else:
            groups.extend((name, "", [name]) for name in names)
    groups.sort(key=lambda group: group[0])
    return [(rel_dir, names) for _, rel_dir, names in groups]


def list_images(folder: Path) -> list[str]:
    """Relative paths of every file under ``folder`` prepare would read, sorted."""
    return [f"{d}/{n}" if d else n for d, names in list_folder(folder).groups for n in names]


def stat_files(fd: int, names: list[str]) -> tuple[list[os.stat_result | None], list[str]]:
    """``stat`` of each name in the folder ``fd`` (links followed), or None with why not for
    one gone, or no longer a regular file, since it was listed."""
    stat_at = os.stat
    try:
        stats: list[os.stat_result | None] = [stat_at(name, dir_fd=fd) for name in names]
    except OSError:
        stats = []
        for name in names:
            try:
                stats.append(stat_at(name, dir_fd=fd))
            except OSError:
                stats.append(None)
    why = [""] * len(names)
    is_regular = stat.S_ISREG
    if not all(st is not None and is_regular(st.st_mode) for st in stats):
        for i, st in enumerate(stats):
            if st is None:
                why[i] = "gone, or no longer readable, since it was listed"
            elif not is_regular(st.st_mode):
                why[i] = f"became a {file_kind(st.st_mode)} since it was listed: not opened"
                stats[i] = None
    return stats, why


def scan_folder(
    folder: Path,
    listing: list[tuple[str, list[str]]],
    known: dict[tuple[str, int, int], str],
    on_new_content: Callable[[str, str, bytes, str | None], None],
    on_group: Callable[[int, int], None] | None = None,
) -> Scan:
    """Stat every listed file; read and hash only those the index does not vouch for.

    ``on_new_content(hash, md5, data, label)`` sees the bytes of each file that was read, so a
    new image is decoded from the same read that hashed it; ``on_group(files, read)`` is
    called after each folder (progress). Each folder is handled as whole lists (stat, then
    look up), not file by file: on a re-run the ``stat`` calls are most of the time. A file
    that cannot be read (gone since it was listed, no permission) is skipped with the reason.
    """
    scan = Scan()
    root = str(folder)
    for rel_dir, names in listing:
        label = rel_dir if rel_dir and "/" not in rel_dir else None
        fd = os.open(folder / rel_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            stats, why = stat_files(fd, names)
        finally:
            os.close(fd)
        rels = [f"{rel_dir}/{name}" for name in names] if rel_dir else list(names)
        if None in stats:
            scan.skipped += [
                Skipped(r, "unreadable", w) for r, w in zip(rels, why, strict=True) if w
            ]
            rels = [r for r, st in zip(rels, stats, strict=True) if st is not None]
            stats = [st for st in stats if st is not None]
        sizes = [st.st_size for st in stats]  # type: ignore[union-attr]  # None removed above
        mtimes = [st.st_mtime_ns for st in stats]  # type: ignore[union-attr]
        found = [known.get(key) for key in zip(rels, sizes, mtimes, strict=True)]
        read_before, unread = scan.read, set()
        if None in found:
            for i, was in enumerate(found):
                if was is None:
                    try:
                        data = read_regular_file(f"{root}/{rels[i]}")
                    except OSError as exc:
                        scan.skipped.append(Skipped(rels[i], "unreadable", str(exc)))
                        unread.add(i)
                        continue
                    digest = content_hash(data)
                    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                    found[i] = digest + md5
                    scan.read += 1
                    on_new_content(digest, md5, data, label)
        if unread:
            keep = [i for i in range(len(rels)) if i not in unread]
            rels, sizes = [rels[i] for i in keep], [sizes[i] for i in keep]
            mtimes, found = [mtimes[i] for i in keep], [found[i] for i in keep]
        first = len(scan.rels)
        scan.rels += rels
        scan.sizes += sizes
        scan.mtimes += mtimes
        scan.ids += found  # type: ignore[arg-type]  # every None was filled above
        scan.hashes += [ids[:64] for ids in found]  # type: ignore[index]
        if rels:
            scan.groups.append((first, len(scan.rels), label))
        if on_group is not None:
            on_group(len(names), scan.read - read_before)
    return scan


def scan_version(
    files: VersionFiles,
    groups: list[tuple[str, list[str]]],
    known: dict[str, str],
    on_new_content: Callable[[str, str, bytes, str | None], None],
    on_group: Callable[[int, int], None] | None = None,
) -> Scan:
    """:func:`scan_folder` for a dataset version: files are known by DVC's md5, not by stat.

    ``groups`` are :func:`group_paths` of the version's paths. A file whose md5 is ``known``
    (md5 -> content hash) costs two look-ups; the others are read, checked against their md5
    (see :meth:`VersionFiles.read`) and hashed. Raises :class:`VersionNotLocal`, after the
    whole scan, when some cannot be read here.
    """
    scan, manifest = Scan(), files.manifest
    missing: list[str] = []
    for rel_dir, rels in groups:
        label = rel_dir if rel_dir and "/" not in rel_dir else None
        md5s = list(map(manifest.__getitem__, rels))  # map: no bytecode per file
        shas = list(map(known.get, md5s))
        read_before = scan.read
        if None in shas:
            for i, sha in enumerate(shas):
                if sha is None:
                    data = files.read(rels[i])
                    if data is None:
                        missing.append(rels[i])
                        continue
                    shas[i] = digest = content_hash(data)
                    scan.read += 1
                    on_new_content(digest, md5s[i], data, label)
        first = len(scan.rels)
        scan.rels += rels
        scan.hashes += shas  # type: ignore[arg-type]  # filled above, or the scan raises below
        scan.groups.append((first, len(scan.rels), label))
        if on_group is not None:
            on_group(len(rels), scan.read - read_before)
    if missing:
        raise VersionNotLocal(missing)
    return scan
