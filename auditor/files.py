"""Every file the program writes or reads from a workspace goes through this module.

One policy for every output path (``--out``, ``--png``, ``report --out``, ``sequence --out``,
``export --out``, the window's save dialogs):

- :func:`check_output` refuses, before anything is written, a target that is or resolves to
  (through any symbolic link) a workspace's own file (:data:`WORKSPACE_NAMES`: the ledger, its
  head and journal files, the lock, the deltas folder), any SQLite database, a file in any model
  checkpoint folder (config.json beside its weights) or a GGUF model file, a protected folder the
  caller names (the base checkpoint in use), a special file (device, FIFO, socket) or anything under
  ``/proc``, ``/sys`` or ``/dev``; a target that is itself a symbolic link; and an existing file or
  folder the caller may not replace.
- :func:`atomic_file` writes to a temporary sibling, fsyncs, renames over the target and fsyncs the
  folder; on any failure (a full disk, EIO, a kill between steps) the temporary file is removed and
  the target is as it was. An ``OSError`` becomes one :class:`OutputError` line naming the file.
- :func:`atomic_folder` does the same for a folder output (exports, patches). Replacing an earlier
  output is allowed only when every file in it is one its own manifest lists, so an overwrite never
  deletes a file the program did not write.

And one policy for reading what a workspace holds (head, deltas, request and run files):
:func:`read_regular` opens without following a FIFO's block, accepts only a regular file, checks
its size against a limit *before* reading and never reads more than the limit.

This module imports nothing from the package except :mod:`auditor.base`: every layer uses it.

Example::

    target = check_output(args.out, what="--out")
    with atomic_file(target, "w") as f:
        f.write(html)
    raw = read_regular(ws / "ledger.head", limit=64 * 1024, what="ledger head")
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from auditor.base import AuditorError

# A folder holding LEDGER_NAME is a workspace; these names inside it belong to the program.
LEDGER_NAME = "ledger.db"
WORKSPACE_NAMES = ("ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-journal", "ledger.head",
                   "workspace.lock", "deltas")
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
SQLITE_MAGIC = b"SQLite format 3\x00"
GGUF_MAGIC = b"GGUF"
# a folder holding config.json and one of these is a model checkpoint (Hugging Face's layout)
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")
TMP_MARK = ".partial-"  # temporary siblings: .<name>.partial-<pid>-<random>


class OutputError(AuditorError, OSError):
    """An output path is refused, or writing it failed; ``str(e)`` is one line naming the file."""


class ReadError(AuditorError, OSError):
    """A file the program reads is missing, not a regular file, too large or unreadable."""


# ---------------------------------------------------------------- what a path is


def workspace_of(path: Path) -> Path | None:
    """The workspace folder ``path`` (resolved) lies in, or None."""
    for folder in (path, *path.parents):
        if (folder / LEDGER_NAME).exists():
            return folder
    return None


def is_checkpoint(folder: Path) -> bool:
    """``folder`` is a model checkpoint: config.json beside its weights (or their index)."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in CHECKPOINT_WEIGHTS)


def starts_with(path: Path, magic: bytes) -> bool:
    """``path`` is a regular file whose first bytes are ``magic``."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def is_sqlite(path: Path) -> bool:
    """``path`` is a regular file that starts like an SQLite database."""
    return starts_with(path, SQLITE_MAGIC)


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def protection(path: str | Path, *, protected: Iterable[str | Path] = ()) -> str | None:
    """Why the program must not write ``path`` (or a folder in it); None when it may."""
    path = Path(path).expanduser().absolute()
    real = Path(os.path.realpath(path))
    for tree in SYSTEM_TREES:
        if _inside(real, tree):
            return f"lies in {tree} (a system folder)"
    for folder in protected:
        folder = Path(os.path.realpath(Path(folder).expanduser()))
        if _inside(real, folder) or _inside(folder, real):
            return f"is, holds or lies inside {folder} (the workspace or the base checkpoint in use)"
    workspace = workspace_of(real)
    if workspace is not None:
        if real == workspace:
            return f"is the workspace {workspace}"
        first = real.relative_to(workspace).parts[0]
        if first in WORKSPACE_NAMES or first.startswith("ledger."):
            return f"is one of the workspace's own files ({workspace / first})"
    elif real.is_dir() and any((real / name).exists() for name in (LEDGER_NAME, "ledger.head")):
        return "holds a workspace"
    sqlite_base = real.name.rsplit("-", 1)[0] if real.name.endswith(("-wal", "-shm", "-journal")) else None
    if is_sqlite(real) or (sqlite_base and is_sqlite(real.with_name(sqlite_base))):
        return "is an SQLite database (a ledger?)"
    # a model's files: any checkpoint's, in use or not (a file written beside its config and
    # weights replaces or joins them; its subfolders are the user's), and GGUF model files
    if real.parent != real and is_checkpoint(real.parent):
        return f"lies in the model checkpoint {real.parent}"
    if starts_with(real, GGUF_MAGIC):
        return "is a GGUF model file"
    return None


def check_output(path: str | Path, *, what: str = "output", folder: bool = False, overwrite: bool = True,
                 protected: Iterable[str | Path] = ()) -> Path:
    """The absolute target for an output ``path``, or :class:`OutputError` saying why not.

    ``folder``: the output is a folder (else a regular file). ``overwrite``: an existing target may
    be replaced (folders: only an earlier output of the program, see :func:`atomic_folder`).
    The parent folder must exist: nothing the user did not name is created.
    """
    if str(path).strip() == "" or "\x00" in str(path):
        raise OutputError(f"{what}: an empty or invalid path")
    target = Path(path).expanduser().absolute()
    why = protection(target, protected=protected)
    if why:
        raise OutputError(f"{target}: {why}; refusing to write it ({what}); choose another path")
    if target.is_symlink():
        raise OutputError(f"{target}: is a symbolic link; name the file itself ({what})")
    if target.exists():
        mode = os.stat(target).st_mode
        if folder and not stat.S_ISDIR(mode):
            raise OutputError(f"{target}: exists and is not a folder ({what})")
        if not folder and not stat.S_ISREG(mode):
            raise OutputError(f"{target}: exists and is not a regular file ({what})")
        if not overwrite:
            raise OutputError(f"{target}: already exists ({what}); choose another path or allow overwriting")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"{target}: no such folder: {parent} ({what}); create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: its folder {parent} is not writable ({what})")
    return target


def describe_os_error(e: OSError) -> str:
    """``No space left on device`` etc.: the part of an OSError a user can act on."""
    text = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        text += "; free some space and retry"
    return text


# ---------------------------------------------------------------- atomic writes


def _tmp_name(target: Path) -> str:
    return f".{target.name}{TMP_MARK}{os.getpid()}-"


def remove_stale_partials(target: Path) -> None:
    """Temporary siblings of ``target`` left by writers whose process is gone."""
    prefix = f".{target.name}{TMP_MARK}"
    with contextlib.suppress(OSError):
        for p in target.parent.glob(f"{prefix}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w", *, what: str = "output") -> Iterator[IO[Any]]:
    """Write ``target`` (already checked by :func:`check_output`) through a temporary sibling.

    The body writes to the yielded file; on success it is fsynced and renamed over ``target``; on
    any exception the temporary file is removed and ``target`` is untouched. Mode ``"a"`` starts
    the temporary file with a copy of ``target``, so an append is all or nothing too.
    """
    if mode not in ("w", "wb", "a"):
        raise ValueError("atomic_file writes whole files: mode 'w', 'wb' or 'a'")
    target = Path(target)
    remove_stale_partials(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_name(target), dir=target.parent)
    except OSError as e:
        raise OutputError(f"{target}: cannot write in {target.parent} ({describe_os_error(e)})") from None
    try:
        if mode == "a" and target.exists():
            with open(target, "rb") as src, open(fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst)
        kwargs = {"encoding": "utf-8", "newline": ""} if mode != "wb" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, AuditorError):
            raise
        raise OutputError(f"{target}: writing failed ({describe_os_error(e)}); nothing was changed") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(path: str | Path, data: str | bytes, *, what: str = "output",
               protected: Iterable[str | Path] = ()) -> Path:
    """Check ``path`` and write ``data`` to it atomically; return the target."""
    target = check_output(path, what=what, protected=protected)
    with atomic_file(target, "wb" if isinstance(data, bytes) else "w", what=what) as f:
        f.write(data)
    return target


def owned_files(folder: Path, listed: Callable[[Path], Iterable[str] | None]) -> list[Path] | None:
    """Every file under ``folder`` when all of them are ones ``listed(folder)`` names; else None."""
    names = listed(folder)
    if names is None:
        return None
    allowed = {os.path.normpath(n) for n in names}
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.normpath(os.path.relpath(os.path.join(root, name), folder))
            if rel not in allowed:
                return None
            found.append(folder / rel)
    return found


def atomic_folder(target: Path, write: Callable[[Path], None], *, overwrite: bool,
                  listed: Callable[[Path], Iterable[str] | None], what: str = "output") -> Path:
    """Run ``write(tmp)`` in a hidden sibling folder, then rename it to ``target``.

    ``listed(folder)`` names the files an earlier output in ``folder`` wrote (its manifest), or
    None when ``folder`` is not one. An existing ``target`` is replaced only with ``overwrite`` and
    only when every file in it is one it lists; otherwise nothing is deleted.
    """
    target = Path(target)
    remove_stale_partials(target)

    def replaceable() -> None:
        if target.exists() and (not overwrite or owned_files(target, listed) is None):
            raise OutputError(f"{target}: already exists and holds files no earlier {what} of this program "
                              "lists; refusing to replace it; choose another path")

    replaceable()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(target), dir=target.parent))
    except OSError as e:
        raise OutputError(f"{target}: cannot write in {target.parent} ({describe_os_error(e)})") from None
    try:
        write(tmp)
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        replaceable()
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_name(target), dir=target.parent))
            target.replace(old / target.name)
            tmp.replace(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(target)
        fsync_dir(target.parent)
    except OSError as e:
        if isinstance(e, AuditorError):
            raise
        raise OutputError(f"{target}: writing failed ({describe_os_error(e)}); nothing was changed") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- bounded reads


def read_regular(path: str | Path, *, limit: int, what: str = "file", missing_ok: bool = False) -> bytes | None:
    """The bytes of the regular file ``path`` (at most ``limit``), or :class:`ReadError`.

    Opens with ``O_NONBLOCK`` (a FIFO does not hang the open), refuses anything but a regular file
    (devices, FIFOs, sockets, folders) and a file larger than ``limit`` before reading, and reads at
    most ``limit + 1`` bytes, so a file that grows while read is refused too. With ``missing_ok`` a
    missing file gives None.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ReadError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise ReadError(f"{path}: {what} cannot be opened ({describe_os_error(e)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError(f"{path}: {what} is not a regular file")
        if info.st_size > limit:
            raise ReadError(f"{path}: {what} is {info.st_size} bytes, more than the {limit} allowed")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        if isinstance(e, AuditorError):
            raise
        raise ReadError(f"{path}: {what} cannot be read ({describe_os_error(e)})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ReadError(f"{path}: {what} grew past the {limit} bytes allowed while being read")
    return data


def check_regular(path: str | Path, *, limit: int, what: str = "file") -> int:
    """The size of the regular file ``path`` (not following a final symlink to a special file).

    For files read by a library (safetensors, SQLite): the same checks as :func:`read_regular`
    without reading.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ReadError(f"{path}: {what} is missing") from None
    except OSError as e:
        raise ReadError(f"{path}: {what} cannot be opened ({describe_os_error(e)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ReadError(f"{path}: {what} is not a regular file")
    if info.st_size > limit:
        raise ReadError(f"{path}: {what} is {info.st_size} bytes, more than the {limit} allowed")
    return info.st_size
