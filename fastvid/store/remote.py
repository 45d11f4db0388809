"""Where shard bytes come from: local paths, `file://`, fsspec URLs (`http(s)://`, `s3://`, `gs://`, ...),
`pipe:` commands, and WebDataset brace patterns (`train-{000000..000099}.tar`).

Addresses stay strings from start to end (never `pathlib.Path`, which turns `s3://b/x` into `s3:/b/x`),
and every error names the address exactly as given.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from urllib.parse import unquote, urlparse

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


class ShardSourceError(FileNotFoundError):
    """A shard address that cannot be read (bad URL, unknown protocol, missing object, failed command)."""


def is_pipe(address: str) -> bool:
    return address.startswith("pipe:")


def scheme(address: str) -> str | None:
    """'s3' for 's3://b/k', 'file' for 'file:///x', None for local paths and pipe: commands."""
    m = _SCHEME.match(address)
    return m.group("scheme").lower() if m else None


def is_remote(address: str) -> bool:
    """True for anything that must be fetched (not a local path, not file://)."""
    return is_pipe(address) or scheme(address) not in (None, "file")


def local_path(address: str) -> str:
    """The local file path of a local address ('file:///x/y' -> '/x/y')."""
    if scheme(address) == "file":
        parsed = urlparse(address)
        if parsed.netloc not in ("", "localhost"):
            raise ShardSourceError(f"{address}: file:// URLs must name a local path (file:///abs/path)")
        return unquote(parsed.path)
    return address


def expand(spec) -> list[str]:
    """A shard spec (one address, a brace pattern, or a list of them) -> list of addresses, in order."""
    import braceexpand

    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if is_pipe(item):
            out.append(item)  # a shell command: its braces are the shell's business
        else:
            out.extend(braceexpand.braceexpand(item))
    return out


def join(base: str, name: str) -> str:
    """`name` inside the directory `base` (a local path or a URL)."""
    if is_remote(base) or scheme(base) == "file":
        return base.rstrip("/") + "/" + name
    return os.path.join(base, name)


def parent(address: str) -> str:
    """The directory part of a local path or URL (no trailing slash)."""
    if is_remote(address) or scheme(address) == "file":
        return address.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(address))


def basename(address: str) -> str:
    if is_pipe(address):
        # The last token that looks like a tar names what the command streams (`pipe:curl -s URL/x.tar`).
        tars = [t for t in re.split(r"[\s'\"]+", address[5:]) if t.endswith(".tar")]
        return tars[-1].rsplit("/", 1)[-1] if tars else "pipe.tar"
    return address.rstrip("/").rsplit("/", 1)[-1]


def _filesystem(address: str):
    """(fsspec filesystem, path) for a URL; ShardSourceError naming the URL when the protocol is unusable."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise ShardSourceError(f"{address}: reading URLs needs fsspec (pip install 'fastvid[remote]')") from None
    proto = scheme(address)
    if proto not in fsspec.available_protocols():
        raise ShardSourceError(f"{address}: unknown protocol {proto!r} (fsspec knows {', '.join(sorted(fsspec.available_protocols())[:12])}, ...)")
    try:
        return url_to_fs(address)
    except ImportError as exc:
        raise ShardSourceError(f"{address}: the {proto!r} protocol needs a package that is not installed ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise ShardSourceError(f"{address}: not a usable {proto} URL ({exc})") from None


def exists(address: str) -> bool:
    if is_pipe(address):
        return True
    if not is_remote(address):
        return os.path.exists(local_path(address))
    fs, path = _filesystem(address)
    try:
        return fs.exists(path)
    except Exception as exc:  # network / permission errors: say so, with the URL
        raise ShardSourceError(f"{address}: cannot be checked ({type(exc).__name__}: {exc})") from None


def read_bytes(address: str) -> bytes:
    """The whole content of a small object (manifest, index) at `address`."""
    if not is_remote(address):
        path = local_path(address)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ShardSourceError(f"{address}: does not exist") from None
    if is_pipe(address):
        return _run_pipe(address)
    fs, path = _filesystem(address)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ShardSourceError(f"{address}: does not exist") from None
    except Exception as exc:
        raise ShardSourceError(f"{address}: cannot be read ({type(exc).__name__}: {exc})") from None


def copy_to(address: str, dest) -> int:
    """Stream `address` into the open binary file `dest`; returns the bytes copied."""
    if is_pipe(address):
        return _stream_pipe(address, dest)
    if not is_remote(address):
        with open(local_path(address), "rb") as src:
            shutil.copyfileobj(src, dest, 1 << 20)
        return dest.tell()
    fs, path = _filesystem(address)
    try:
        with fs.open(path, "rb") as src:
            shutil.copyfileobj(src, dest, 1 << 20)
    except FileNotFoundError:
        raise ShardSourceError(f"{address}: does not exist") from None
    except Exception as exc:
        raise ShardSourceError(f"{address}: download failed ({type(exc).__name__}: {exc})") from None
    return dest.tell()


def _run_pipe(address: str) -> bytes:
    proc = subprocess.run(address[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ShardSourceError(f"{address}: command exited with status {proc.returncode}" + (f" ({err[-1]})" if err else ""))
    return proc.stdout


def _stream_pipe(address: str, dest) -> int:
    """Run a `pipe:` command (the WebDataset convention: the rest is a shell command writing the tar to stdout)."""
    proc = subprocess.Popen(address[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shutil.copyfileobj(proc.stdout, dest, 1 << 20)
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    if proc.wait() != 0:
        raise ShardSourceError(f"{address}: command exited with status {proc.returncode}" + (f" ({err[-1]})" if err else ""))
    return dest.tell()
