"""Output files: checked before the work starts, written atomically, with the user's umask.

* :func:`check_output` — is ``-o PATH`` a place we may write a regular file? Called by every command for
  every output *before* its long work (a training run must not end on "folder does not exist").
* :func:`atomic_path` — write to ``.NAME.PID.RANDOM.tmp`` next to the target, fsync, rename onto it. A crash,
  Ctrl-C or kill -9 never leaves a half-written output: readers see the old file or the new one. Temporary
  files of writers that died (their PID is gone) are removed by the next write to the same target.
* :func:`output_lock` — one writer per output at a time (``flock`` on ``.NAME.lock``; released by the kernel
  when the holder dies).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import BadInputError, RunError
from ..text import quote

_KIND = {
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}
LEGACY_TEMP_AGE_S = 3600  # temporaries without a PID (older poolcli) are stale after an hour


def _kind(mode: int) -> str | None:
    for test, name in _KIND.items():
        if test(mode):
            return name
    return None


def check_output(path: str | os.PathLike, option: str = "-o", nbytes: int | None = None) -> Path:
    """Check that ``path`` can receive a regular file and return where it will be written.

    A symbolic link is written through (its target is replaced, the link stays). Refused with a one-line
    :class:`BadInputError`: a folder, a device node, FIFO or socket, a missing or unwritable folder, a read-only
    existing file. ``nbytes``: refuse up front when the file system has less free space than that."""
    raw = Path(path)
    if str(path) == "" or raw.name in ("", ".", ".."):
        raise BadInputError(f"{option} {quote(path)} names no file; give a file name such as out.safetensors")
    target = Path(os.path.realpath(raw)) if raw.is_symlink() else raw
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadInputError(f"cannot write {option} {quote(raw)}: {e.strerror}; choose another path") from None
    if st is not None:
        kind = _kind(st.st_mode)
        if kind == "a folder":
            raise BadInputError(f"{option} {quote(raw)} is a folder; give a file path inside it, e.g. {raw}/out")
        if kind is not None:
            raise BadInputError(f"{option} {quote(raw)} is {kind}, not a regular file; give a file path")
        # no write bit at all is a deliberate "read-only", honoured even where root's os.access() says yes
        if not os.access(target, os.W_OK) or not st.st_mode & 0o222:
            raise BadInputError(
                f"{option} {quote(raw)} exists and is read-only; make it writable or choose another path"
            )
    folder = target.parent
    if not folder.is_dir():
        raise BadInputError(
            f"cannot write {option} {quote(raw)}: folder {quote(folder)} does not exist; create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or not os.stat(folder).st_mode & 0o222:
        raise BadInputError(
            f"cannot write {option} {quote(raw)}: folder {quote(folder)} is not writable; choose another"
        )
    if nbytes is not None:
        free = shutil.disk_usage(folder).free
        if free < nbytes:
            raise BadInputError(
                f"{option} {quote(raw)} needs {nbytes / 2**20:.1f} MiB but {folder} has "
                f"{free / 2**20:.1f} MiB free; free space or write elsewhere"
            )
    return target


def check_suffix(path: str | os.PathLike, what: str, option: str = "-o") -> None:
    """poolcli writes only ``.safetensors`` files: refuse another name before any work."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise BadInputError(
            f"{option} {quote(p)}: {what} are .safetensors files; name it {p.with_suffix('.safetensors').name}"
        )


def check_distinct(*paths: tuple[str, str | os.PathLike | None]) -> None:
    """Refuse two outputs (``(option, path)`` pairs) that name the same file."""
    seen: dict[str, str] = {}
    for option, p in paths:
        if p is None:
            continue
        key = os.path.realpath(p)
        if key in seen:
            raise BadInputError(f"{seen[key]} and {option} name the same file {quote(p)}; give them different paths")
        seen[key] = option


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_pattern(name: str) -> re.Pattern:
    return re.compile(r"^\." + re.escape(name) + r"\.(?:(\d+)\.)?[0-9a-zA-Z_]+(?:\.[a-z]+)?\.tmp$")


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temporaries left next to ``target`` by writers that died (kill -9, power loss)."""
    removed = []
    pattern = _temp_pattern(target.name)
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            m = pattern.match(entry.name)
            if not m:
                continue
            pid = m.group(1)
            with contextlib.suppress(OSError):
                stale = (not _pid_alive(int(pid))) if pid else (time.time() - entry.stat().st_mtime > LEGACY_TEMP_AGE_S)
                if stale and pid != str(os.getpid()):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(e: OSError, target: Path) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(
            f"no space left on the device writing {quote(target)}; free space or write elsewhere "
            "(nothing was written, the previous file is untouched)"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BadInputError(f"cannot write {quote(target)}: {e.strerror}; choose a writable path")
    return RunError(f"writing {quote(target)} failed: {e.strerror or e}; nothing was written")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    The file gets the permissions a plain ``open()`` would (0666 minus the umask). On any exception the
    temporary file is removed and the exception propagates (an OSError as a one-line poolcli error)."""
    target = check_output(path)
    remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_error(e, target) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str = "poolcli") -> Iterator[None]:
    """Hold an exclusive lock for writing ``path`` (``.NAME.lock`` next to it); refuse if another process
    holds it. The lock file is removed on exit; one left by a killed process is simply taken over."""
    target = check_output(path)
    lock = target.parent / f".{target.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise _write_error(e, lock) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BadInputError(
                f"another {what} (pid {holder}) is writing {quote(target)} now; wait for it to "
                "finish or choose another output"
            ) from None
        try:  # the file we locked must still be the one at that path (a finishing holder unlinks it)
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
