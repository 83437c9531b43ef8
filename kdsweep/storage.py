"""Experiment storage: a local directory or a URI (s3://, gs://, file://) with one small API.

Every file kdsweep writes goes through `Store.write_bytes`, which never leaves a half-written file under the final
name: locally it writes a temporary file in the same directory, fsyncs it and renames it over the target; object
stores make a PUT visible only once it is complete. A write that fails (disk full, read-only mount, missing
credentials) raises a `UserError` naming the path, and what was written before stays readable.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kdsweep.errors import UserError

TEMP_SUFFIX = ".tmp"  # local writes go to `.<name>.<random>.tmp` first, then are renamed over `<name>`


def is_uri(location: str) -> bool:
    return "://" in location


# Object stores kdsweep reads and writes through pyarrow.fs (credentials come from the environment, as pyarrow
# reads them). Anything else with a scheme is refused when the space is validated, not inside a trial.
URI_SCHEMES = ("s3", "gs", "gcs", "file")  # file://: a local folder through the same object-store code


def location_problem(location: str) -> str | None:
    """Why `location` cannot be an experiment's storage or a teacher checkpoint, or None when it can."""
    if not is_uri(location):
        return None
    scheme = location.split("://", 1)[0]
    if scheme.lower() in URI_SCHEMES:
        return None
    return (f"unsupported scheme '{scheme}://'; use a local path (one every node sees, on a cluster) or a URI "
            f"starting with {', '.join(s + '://' for s in URI_SCHEMES)}")


def absolute_location(location: str, base: Path | None = None) -> str:
    """A URI unchanged, a local path made absolute (relative to `base`, else the working directory)."""
    if is_uri(location):
        return location.rstrip("/")
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve())


class Store:
    def __init__(self, root: str):
        self.root = absolute_location(root)
        if is_uri(self.root):
            import pyarrow.fs as pafs

            problem = location_problem(self.root)
            if problem:
                raise UserError(f"storage {self.root}: {problem}.")
            try:
                self._fs, self._base = pafs.FileSystem.from_uri(self.root)
            except (OSError, ValueError) as err:  # pyarrow.lib.ArrowInvalid is a ValueError
                raise UserError(f"cannot open storage {self.root}: {str(err).strip().splitlines()[0]}.") from None
        else:
            self._fs, self._base = None, self.root

    # Paths -------------------------------------------------------------------------------------------------
    def location(self, rel: str = "") -> str:
        """Absolute path or URI of `rel` inside the store (what messages and other processes use)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def local_path(self, rel: str = "") -> Path | None:
        return None if self._fs else Path(self.root, rel)

    def child(self, rel: str) -> Store:
        return Store(self.location(rel))

    # Reading ----------------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if self._fs is None:
            return Path(self.root, rel).exists()
        import pyarrow.fs as pafs

        return self._fs.get_file_info(self._full(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        if self._fs is None:
            return Path(self.root, rel).read_bytes()
        with self._fs.open_input_stream(self._full(rel)) as f:
            return f.read()

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def list(self, rel: str = "") -> list[str]:
        """Names directly inside `rel` (empty when it does not exist)."""
        if self._fs is None:
            path = Path(self.root, rel)
            return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._full(rel), allow_not_found=True)
        return sorted(info.base_name for info in self._fs.get_file_info(selector))

    # Writing ----------------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            if self._fs is None:
                _atomic_local_write(Path(self.root, rel), data)
            else:
                self._fs.create_dir(self._full(rel).rsplit("/", 1)[0], recursive=True)
                with self._fs.open_output_stream(self._full(rel)) as f:
                    f.write(data)
        except OSError as err:
            raise UserError(
                f"cannot write {self.location(rel)}: {err.strerror or err}. Free space or fix permissions on "
                f"that location (or choose another `storage`); everything written there before is intact, and "
                f"running the same command again resumes from it."
            ) from err

    def write_json(self, rel: str, value) -> None:
        self.write_bytes(rel, (json.dumps(value, indent=1, sort_keys=False, default=_json_default) + "\n").encode())

    def delete(self, rel: str) -> None:
        if self._fs is None:
            Path(self.root, rel).unlink(missing_ok=True)
        elif self.exists(rel):
            self._fs.delete_file(self._full(rel))

    def delete_unfinished_writes(self, folder: str) -> None:
        """Remove the temporary files that writes into `folder` left when their process was killed mid-write.
        Only for a folder this process alone writes to (a run's folder, by the group that trains the run): another
        writer's temporary file is its write in flight. Object stores leave none."""
        if self._fs is None and Path(self.root, folder).is_dir():
            for debris in Path(self.root, folder).glob(f".*{TEMP_SUFFIX}"):
                debris.unlink(missing_ok=True)

    def _full(self, rel: str) -> str:
        return f"{self._base}/{rel}".rstrip("/")


def _atomic_local_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates 0600 whatever the umask; the file kdsweep leaves gets the mode any other tool's would
        # (0644 under umask 022, 0640 under 027), so that a group sharing the results on NFS can read them.
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def process_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which would race
    with the other threads of a Ray worker); from /proc on Linux, else by the set-and-restore dance."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
