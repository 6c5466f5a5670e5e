"""Writing files safely, and reading paths that come from files: the one place hirm does either.

- `atomic_file(path)` / `atomic_dir(path)`: write beside the target under a hidden temporary name, then rename into
  place, so a reader (or a resumed run) never sees half a file, whatever stops the write (Ctrl-C, SIGTERM, a full
  disk). Unlike `tempfile`, the temporary file is created with the mode `open()` would use (0666 / 0777 less the
  umask), so outputs are readable by whoever the umask lets read them.
- `check_output_file` / `check_output_dir`: refuse an output path before minutes of compute, not after.
- `safe_name` / `inside`: a name read from a file (a variant, a record key) stays one path component, and a path
  built from it stays inside its folder, symlinks included.
- `run_folder_lock`: one writer per run folder at a time (an advisory `flock`, released if the process dies).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hirm.errors import HirmError


def write_error(path: Path, e: OSError) -> HirmError:
    """A one-line HirmError for an OSError met while writing `path`."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return HirmError(f"no space left on the device to write {path}: free some space and re-run the same "
                         "command (no file was left half-written; a run folder resumes where it stopped)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HirmError(f"cannot write {path}: {e.strerror}: choose a place you can write to")
    return HirmError(f"cannot write {path}: {e.strerror or e}")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_modes(folder: Path) -> None:
    """Give a written folder's files and sub-folders the modes `open` / `mkdir` would (0666 / 0777 less the umask):
    some writers (safetensors) create their files 0600 whatever the umask."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_file(p) as tmp: write tmp` writes `p` all or nothing.

    `tmp` is an empty file beside `p` (same folder, so the final rename is atomic) with the umask's mode. When the
    block ends normally the file is flushed to disk and renamed to `p`; when it raises (an OSError, Ctrl-C, ...)
    the temporary file is removed and `p` is left as it was. OSErrors come out as one-line HirmErrors.
    """
    path = Path(path)
    if path.is_dir():
        raise HirmError(f"{path} is a folder; expected a file name there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # writers that recreate the file (safetensors) may use other modes
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """`with atomic_dir(p) as tmp: fill tmp` creates folder `p` all or nothing.

    Without `replace`, an existing `p` must be an empty folder (a half-old, half-new folder is worse than an
    error); with it, an existing `p` is swapped out only once the new one is complete.
    """
    path = Path(path)
    if path.exists() and not replace and (not path.is_dir() or any(path.iterdir())):
        raise HirmError(f"{path} already exists and is not an empty folder: choose a new one or remove it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        os.mkdir(tmp, 0o777)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        _umask_modes(tmp)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists() and not any(path.iterdir()):
            path.rmdir()
        elif path.exists():
            old = _temp_name(path)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
            return
        tmp.rename(path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


# --- output paths, checked before the compute ------------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return Path("/")


def _check_writable_parent(path: Path, what: str) -> None:
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise HirmError(f"{what} {path}: {anchor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=anchor):
            pass
    except OSError as e:
        raise HirmError(f"{what} {path}: cannot write in {anchor} ({e.strerror or e}): choose a place you can "
                        "write to") from e


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None, what: str = "--out") -> Path:
    """Refuse, before any compute, an output file that could not be written: a wrong suffix, an existing folder,
    a parent that is a file, a place this process cannot write in. Creates nothing."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise HirmError(f"{what} {path}: expected a name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise HirmError(f"{what} {path} is an existing folder; give a file name")
    _check_writable_parent(path, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "--out", empty: bool = False) -> Path:
    """Refuse, before any compute, an output folder that could not be written: an existing file, a parent that
    is a file, a place this process cannot write in; with `empty`, an existing folder with files in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HirmError(f"{what} {path} is an existing file; give a folder")
    if path.is_dir():
        if empty and any(path.iterdir()):
            raise HirmError(f"{what} {path} already exists and is not empty: choose a new folder or remove it")
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise HirmError(f"{what} {path}: cannot write in it ({e.strerror or e})") from e
        return path
    _check_writable_parent(path, what)
    return path


# --- names and paths read from files ---------------------------------------------------------------------------

def safe_name(name: object, what: str) -> str:
    """`name` if it is usable as one file name: a non-empty string with no path separator, NUL or control
    character, not '.' or '..', not hidden. Names come from files (run.json, record file names), so a
    name like 'a/../../x' must never become a path."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise HirmError(f"{what} {name!r:.80} is not a usable name (a non-empty string of at most 200 characters)")
    if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0") \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise HirmError(f"{what} {name!r:.80} is not a plain file name (no /, \\, leading '.', or control "
                        "characters): the file that names it was not written by hirm, or was edited")
    return name


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "") -> Path:
    """`path` if it stays inside `root` once symlinks are resolved, else a HirmError: a symlink in a run folder
    must not lead hirm to read or write files elsewhere."""
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != root_real and root_real not in real.parents:
        raise HirmError(f"{what or path} leads outside {root} (to {real}): hirm does not follow links out of a "
                        "run folder; replace the link with the files themselves")
    return Path(path)


def check_format_version(found: Any, supported: str, what: str) -> None:
    """Accept format `supported` ("MAJOR") or a later minor version of it ("MAJOR.MINOR"); refuse a newer major
    version (written by a newer hirm) or anything that is not a version, in one line."""
    major = supported.split(".")[0]
    if not isinstance(found, str) or not found.split(".")[0].isdigit() or len(found) > 20:
        raise HirmError(f"{what} version {found!r:.40}, which is not a version this hirm knows: re-make it")
    if int(found.split(".")[0]) > int(major):
        raise HirmError(f"{what} v{found}, written by a newer hirm; this hirm reads v{major}: upgrade hirm "
                        "(pip install -U hirm)")
    if found.split(".")[0] != major:
        raise HirmError(f"{what} v{found}; this hirm reads v{major}: re-make it with this hirm")


# --- one writer per run folder ---------------------------------------------------------------------------------

@contextmanager
def run_folder_lock(folder: str | os.PathLike, create: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on run folder `folder` for the block: a second hirm process that wants to write the
    same folder stops with a one-line error instead of interleaving its files with this one's. The lock is
    `fcntl.flock` on the folder itself (no lock file to clean up), released when the block ends or the process
    dies. On a file system without flock the block runs unlocked.

    With `create`, a missing folder is created (after `check_output_dir`), and removed again if the block fails
    and leaves it empty."""
    import fcntl

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HirmError(f"--out {folder} is an existing file, not a run folder")
    made = False
    if not folder.exists():
        if not create:
            raise HirmError(f"{folder} does not exist")
        check_output_dir(folder)
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise write_error(folder, e) from e
        made = True
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HirmError(f"{folder} is being written by another hirm process: wait for it to finish, or choose "
                            "another folder") from None
        except OSError:
            pass  # no flock here (some network file systems): unlocked, as before
        ok = False
        try:
            yield folder
            ok = True
        finally:
            if made and not ok and not any(folder.iterdir()):
                folder.rmdir()
    finally:
        os.close(fd)
