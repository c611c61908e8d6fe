"""Reading a file only when it is a regular file: a FIFO or a device in a dataset must not hang."""

from __future__ import annotations

import os
import stat


class NotARegularFile(OSError):
    """A path that is not a regular file (a FIFO, a socket, a device, a folder): not read."""


FILE_KINDS = {
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "folder",
    stat.S_IFLNK: "symbolic link",
}


def file_kind(mode: int) -> str:
    """What a ``stat`` mode says a path is, in words."""
    return FILE_KINDS.get(
        stat.S_IFMT(mode), "regular file" if stat.S_ISREG(mode) else "special file"
    )


def read_regular_file(path: str, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of ``path``, only if it is a regular file; raises :class:`NotARegularFile`.

    Opened without blocking (a FIFO would wait for a writer forever, a device may too) and
    checked on the open file, so what is read is what was checked. Without
    ``follow_symlinks``, a symbolic link is refused.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is a {file_kind(mode)}, not a regular file")
        with open(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)
