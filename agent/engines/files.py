"""The one file-system helper: sha256 of a file and atomic replacement (temp, fsync, rename, dir fsync).

Every temp file is created fresh by whoever fills it (``open`` here, nvcc or g++ for
the kernel cache), never by ``mkstemp``: a new file gets 0666 & ~umask, so with the
usual umask 022 the artifacts, manifests and cubins are 0644 and the service user can
read what root built (mkstemp's 0600 left root-built cubins unreadable to it).
"""

import contextlib
import errno
import hashlib
import os

from ..errors import EngineError


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file's bytes; raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def image_set(folder, limit=0):
    """(the first ``limit`` image paths under ``folder``, sorted; sha256 of their names and bytes),
    ([], None) when the folder is missing or has none. The hash names a calibration set."""
    import glob

    from ..sources.files import IMAGE_EXTENSIONS

    if not folder or not os.path.isdir(folder):
        return [], None
    paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    paths = paths[:limit] if limit else paths
    if not paths:
        return [], None
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.relpath(p, folder).encode("utf-8") + b"\0" + sha256_file(p).encode("ascii") + b"\n")
    return paths, h.hexdigest()


def _default_writer(f, data):
    f.write(data)


def fsync_dir(dirpath):
    """fsync a directory so a rename in it survives a power cut."""
    fd = os.open(dirpath or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path):
    """A fresh, not yet existing name beside ``path`` for its temp file (same dir: rename stays atomic)."""
    dirpath = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    # The extension stays last: compilers pick the output format from it.
    return os.path.join(dirpath, ".{}.tmp-{}-{}{}".format(base, os.getpid(), os.urandom(3).hex(), ext))


def stage_file(path, data, writer=None):
    """Write ``data`` to a temp file beside ``path``, flushed and fsynced; return its path.

    On any failure (ENOSPC included) the temp file is removed; raises EngineError.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            (writer or _default_writer)(f, data)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, IOError) as e:
        remove_quietly(tmp)
        raise EngineError("cannot write {}: {}".format(path, os_reason(e)))
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def commit_files(pairs):
    """Rename staged temp files onto their targets ``[(tmp, path)]``, then fsync the dirs; raises EngineError."""
    try:
        for tmp, path in pairs:
            os.rename(tmp, path)
    except OSError as e:
        for tmp, _ in pairs:
            remove_quietly(tmp)
        raise EngineError("cannot rename into {}: {}".format(pairs[0][1], os_reason(e)))
    for d in sorted(set(os.path.dirname(os.path.abspath(p)) for _, p in pairs)):
        fsync_dir(d)


def atomic_write(path, data, writer=None):
    """Replace ``path`` with ``data`` atomically; the old file stays intact on failure; raises EngineError."""
    commit_files([(stage_file(path, data, writer), path)])


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temp path beside ``path`` for another program to create; on success fsync it and rename it
    onto ``path``. Whatever the block raises propagates, and the temp file is removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        remove_quietly(tmp)


def remove_quietly(path):
    """Remove ``path`` if it exists; never raises."""
    try:
        os.remove(path)
    except OSError:
        pass


def os_reason(e):
    """The short reason of an OSError for a one-line message ('no space left on device')."""
    if getattr(e, "errno", None) == errno.ENOSPC:
        return "no space left on device"
    return e.strerror or str(e)
