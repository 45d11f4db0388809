"""Where shard bytes come from: local paths, `file://`, fsspec URLs (`http(s)://`, `s3://`, `gs://`, ...),
`pipe:` commands, and WebDataset brace patterns (`train-{000000..000099}.tar`).

Addresses stay strings from start to end (never `pathlib.Path`, which turns `s3://b/x` into `s3:/b/x`),
and every error names the address exactly as given and says what happened: the HTTP status, a refused
connection, a timeout (no data for FASTVID_REMOTE_TIMEOUT seconds, default 60), a failed command.
Transport is fsspec's (HTTP through aiohttp, S3 through s3fs); whole objects are streamed with one GET
(no HEAD first), small files are read whole, sample byte ranges with `read_ranges`.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import subprocess
from urllib.parse import unquote, urlparse

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
DEFAULT_TIMEOUT_S = 60.0
# A brace pattern naming more shards than this is refused before it is expanded (10^8 names would take
# gigabytes and minutes); FASTVID_MAX_SHARDS raises it.
DEFAULT_MAX_SHARDS = 1_000_000
COPY_CHUNK = 1 << 20
CONCURRENT_READS = 16  # small files (indexes, metadata) requested at once when a remote set opens


class ShardSourceError(FileNotFoundError):
    """A shard address that cannot be read (bad URL, unknown protocol, missing object, failed command,
    server error, timeout); the message names the address and says what happened."""


def timeout_s() -> float:
    """Seconds a remote read may wait for data before it fails (FASTVID_REMOTE_TIMEOUT, default 60)."""
    text = os.environ.get("FASTVID_REMOTE_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"FASTVID_REMOTE_TIMEOUT={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"FASTVID_REMOTE_TIMEOUT={text!r}: must be > 0 seconds")
    return value


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


def max_shards() -> int:
    text = os.environ.get("FASTVID_MAX_SHARDS")
    try:
        return int(text) if text else DEFAULT_MAX_SHARDS
    except ValueError:
        raise ValueError(f"FASTVID_MAX_SHARDS={text!r}: expected a whole number") from None


def expand(spec) -> list[str]:
    """A shard spec (one address, a brace pattern, or a list of them) -> list of addresses, in order.
    Patterns are counted before they are expanded: more than FASTVID_MAX_SHARDS names is an error."""
    import braceexpand

    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    limit = max_shards()
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if is_pipe(item):
            out.append(item)  # a shell command: its braces are the shell's business
            continue
        count = brace_count(item)
        if len(out) + count > limit:
            raise ValueError(f"{item}: the brace pattern names {count:,} shards, more than {limit:,} "
                             "(FASTVID_MAX_SHARDS); check the pattern, or raise the limit")
        out.extend(braceexpand.braceexpand(item))
    return out


_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_ALPHA_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


def brace_count(pattern: str) -> int:
    """How many names a braceexpand pattern gives, without expanding it (an upper bound for odd patterns)."""
    total, i = 1, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            end = _matching_brace(pattern, i)
            if end > 0:
                total *= _group_count(pattern[i + 1:end])
                i = end + 1
                continue
        i += 1
    return total


def _matching_brace(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
        i += 1
    return -1


def _top_level_parts(text: str) -> list[str]:
    parts, depth, last, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
        i += 1
    return parts + [text[last:]]


def _group_count(inner: str) -> int:
    parts = _top_level_parts(inner)
    if len(parts) > 1:
        return sum(brace_count(p) for p in parts)
    for pattern, value in ((_RANGE, int), (_ALPHA_RANGE, ord)):
        m = pattern.match(inner)
        if m:
            step = abs(int(m.group(3))) if m.group(3) else 1
            return abs(value(m.group(2)) - value(m.group(1))) // max(step, 1) + 1
    return brace_count(inner)


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


def _storage_options(proto: str, timeout: float) -> dict:
    """Bounded waits per protocol: a stalled or unreachable server fails after `timeout` s without data."""
    if proto in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)}}
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}}
    return {}


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
        return url_to_fs(address, **_storage_options(proto, timeout_s()))
    except ImportError as exc:
        raise ShardSourceError(f"{address}: the {proto!r} protocol needs a package that is not installed ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise ShardSourceError(f"{address}: not a usable {proto} URL ({exc})") from None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__


def describe(exc: BaseException) -> str:
    """What a transport error means, in words: 'HTTP 500 Internal Server Error', 'connection refused',
    'timed out (no data for 60 s)', 'does not exist'."""
    for e in _chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int) and status >= 400:
            reason = getattr(e, "message", "") or ""
            return f"HTTP {status}" + (f" {reason}" if reason else "") + (" (does not exist)" if status == 404 else "")
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:  # botocore ClientError
            code = response["Error"].get("Code", "?")
            http = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return f"{code}" + (f" (HTTP {http})" if http else "")
    for e in _chain(exc):
        name = type(e).__name__
        if isinstance(e, ConnectionRefusedError) or "ConnectionRefused" in name or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused (is the server running?)"
        if "Timeout" in name or isinstance(e, TimeoutError):
            return f"timed out (no data for {timeout_s():g} s; FASTVID_REMOTE_TIMEOUT sets the wait)"
        if "EndpointConnection" in name or "ClientConnector" in name or isinstance(e, ConnectionError):
            return f"cannot connect ({name}: {e})"
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"{type(exc).__name__}: {exc}"


def _fail(address: str, exc: BaseException, doing: str) -> ShardSourceError:
    what = describe(exc)
    if what == "does not exist":
        return ShardSourceError(f"{address}: does not exist")
    return ShardSourceError(f"{address}: {doing} failed: {what}")


def exists(address: str) -> bool:
    if is_pipe(address):
        return True
    if not is_remote(address):
        return os.path.exists(local_path(address))
    fs, path = _filesystem(address)
    try:
        return fs.exists(path)
    except Exception as exc:  # network / permission errors: say so, with the URL
        raise _fail(address, exc, "checking it") from None


def fingerprint(address: str) -> str:
    """What identifies the current content of a remote object without reading it (size, ETag, modification
    time): a cached copy of a tar listed without a manifest is reused only while this stays the same."""
    fs, path = _filesystem(address)
    try:
        info = fs.info(path)
    except Exception as exc:
        raise _fail(address, exc, "checking it") from None
    parts = [str(info.get(k) or "") for k in ("size", "ETag", "etag", "Last-Modified", "LastModified", "mtime")]
    return "|".join(parts)


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
    except Exception as exc:
        raise _fail(address, exc, "reading it") from None


def read_many(addresses: list[str]) -> list:
    """The whole contents of many small objects (indexes, metadata files), fetched concurrently (fsspec's
    batched `cat`); each entry is the bytes or the ShardSourceError saying what went wrong."""
    out: list = [None] * len(addresses)
    groups: dict = {}
    for i, address in enumerate(addresses):
        if not is_remote(address) or is_pipe(address):
            try:
                out[i] = read_bytes(address)
            except ShardSourceError as exc:
                out[i] = exc
            continue
        fs, path = _filesystem(address)
        groups.setdefault(id(fs), (fs, []))[1].append((i, path, address))
    for fs, members in groups.values():
        try:
            got = fs.cat([path for _, path, _ in members], on_error="return", batch_size=CONCURRENT_READS)
        except Exception as exc:
            got = {path: exc for _, path, _ in members}
        for i, path, address in members:
            data = got.get(path, FileNotFoundError(path)) if isinstance(got, dict) else got
            out[i] = _fail(address, data, "reading it") if isinstance(data, BaseException) else data
    return out


def read_ranges(address: str, spans: list[tuple[int, int]]) -> list[bytes]:
    """The bytes [offset, offset + size) of `address` for each (offset, size): one request per range for
    URLs (run concurrently by fsspec), preads for local files."""
    if not is_remote(address):
        fd = os.open(local_path(address), os.O_RDONLY)
        try:
            out = [os.pread(fd, size, offset) for offset, size in spans]
        finally:
            os.close(fd)
        for data, (offset, size) in zip(out, spans):
            if len(data) != size:
                raise ShardSourceError(f"{address}: bytes {offset}..{offset + size} are cut short ({len(data)} bytes): "
                                       "the file is shorter than its index says")
        return out
    if is_pipe(address):
        raise ShardSourceError(f"{address}: a pipe: command has no byte ranges")
    fs, path = _filesystem(address)
    try:
        out = fs.cat_ranges([path] * len(spans), [o for o, _ in spans], [o + n for o, n in spans], on_error="raise")
    except Exception as exc:
        raise _fail(address, exc, "reading byte ranges of it") from None
    for data, (offset, size) in zip(out, spans):
        if isinstance(data, BaseException):
            raise _fail(address, data, f"reading bytes {offset}..{offset + size} of it")
        if len(data) != size:
            raise ShardSourceError(f"{address}: bytes {offset}..{offset + size} came back as {len(data)} bytes "
                                   "(the object is shorter than its index says)")
    return out


def _open_stream(fs, path: str, address: str):
    """A file object reading the whole object with one request. HTTP goes straight to GET (fsspec's
    `open` sends a HEAD first and reports every failure of it as 'not found')."""
    if scheme(address) in ("http", "https"):
        from fsspec.asyn import sync
        from fsspec.implementations.http import HTTPStreamFile

        session = sync(fs.loop, fs.set_session)
        return HTTPStreamFile(fs, path, session=session, loop=fs.loop)
    return fs.open(path, "rb", block_size=8 << 20, cache_type="readahead")


def copy_to(address: str, dest) -> int:
    """Stream `address` into the open binary file `dest` (anything with write()); returns the bytes copied."""
    if is_pipe(address):
        return _stream_pipe(address, dest)
    if not is_remote(address):
        with open(local_path(address), "rb") as src:
            return _copy(src, dest)
    fs, path = _filesystem(address)
    try:
        with _open_stream(fs, path, address) as src:
            return _copy(src, dest)
    except OSError as exc:
        if getattr(exc, "filename", None) or getattr(exc, "_fastvid_local", False):
            raise  # the local side (a full cache disk): the caller names the file
        raise _fail(address, exc, "download") from None
    except Exception as exc:
        raise _fail(address, exc, "download") from None


def _copy(src, dest) -> int:
    total = 0
    while True:
        block = src.read(COPY_CHUNK)
        if not block:
            return total
        try:
            dest.write(block)
        except OSError as exc:
            exc._fastvid_local = True  # a local write error, not a transport one
            raise
        total += len(block)


def _run_pipe(address: str) -> bytes:
    proc = subprocess.run(address[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ShardSourceError(f"{address}: command exited with status {proc.returncode}" + (f" ({err[-1]})" if err else ""))
    return proc.stdout


def _stream_pipe(address: str, dest) -> int:
    """Run a `pipe:` command (the WebDataset convention: the rest is a shell command writing the tar to stdout).
    A command silent for FASTVID_REMOTE_TIMEOUT seconds is stopped."""
    wait = timeout_s()
    proc = subprocess.Popen(address[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    total, err = 0, b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            open_streams = 2
            while open_streams:
                ready = sel.select(wait)
                if not ready:
                    raise ShardSourceError(f"{address}: timed out (the command wrote nothing for {wait:g} s; "
                                           "FASTVID_REMOTE_TIMEOUT sets the wait)")
                for key, _ in ready:
                    block = os.read(key.fileobj.fileno(), COPY_CHUNK)
                    if not block:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                    elif key.fileobj is proc.stderr:
                        err = (err + block)[-4096:]  # the last lines say why a command failed
                    else:
                        try:
                            dest.write(block)
                        except OSError as exc:
                            exc._fastvid_local = True
                            raise
                        total += len(block)
    except BaseException:
        _stop(proc)
        raise
    lines = err.decode(errors="replace").strip().splitlines()
    if proc.wait() != 0:
        raise ShardSourceError(f"{address}: command exited with status {proc.returncode}" + (f" ({lines[-1]})" if lines else ""))
    return total


def _stop(proc) -> None:
    """Stop a pipe: command and everything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass
    proc.wait()
