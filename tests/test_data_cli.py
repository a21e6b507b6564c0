"""`bench data verify|download` handlers, and the resumable, checksummed download against a local
HTTP server that honours Range requests (python's http.server does not, hence the handler)."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from bench.features import data
from bench.features.weights import WeightsError, download
from tests.test_tasks import CUB_COUNTS, cub_tree


class Server:
    """Serves ``files`` on 127.0.0.1; records each request's Range header.

    ``honour_range=False`` answers every request in full; ``cut_after`` bytes ends the first
    response early, as a dropped connection would.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files, self.ranges = files, []
        self.honour_range, self.cut_after = True, None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                asked = self.headers.get("Range")
                server.ranges.append(asked)
                start = int(asked[6:].rstrip("-")) if asked and server.honour_range else 0
                if start >= len(body) and asked:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None:
                    payload, server.cut_after = payload[: server.cut_after], None
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server({"/blob.bin": os.urandom(300_000)})
    yield s
    s.close()


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def test_download_verifies_and_records_sha256(server, tmp_path):
    body = server.files["/blob.bin"]
    target = tmp_path / "blob.bin"
    download(f"{server.url}/blob.bin", target, md5=md5(body))
    assert target.read_bytes() == body and server.ranges == [None]
    sidecar = json.loads(target.with_name("blob.bin.sha256").read_text())
    assert sidecar["sha256"] == hashlib.sha256(body).hexdigest()


def test_download_resumes_a_partial_file(server, tmp_path):
    body = server.files["/blob.bin"]
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.partial").write_bytes(body[:100_000])
    download(f"{server.url}/blob.bin", target, md5=md5(body))
    assert server.ranges == ["bytes=100000-"] and target.read_bytes() == body


def test_download_interrupted_then_resumed(server, tmp_path):
    body = server.files["/blob.bin"]
    target = tmp_path / "blob.bin"
    server.cut_after = 120_000
    with pytest.raises(WeightsError, match="Run the same command again to resume"):
        download(f"{server.url}/blob.bin", target, md5=md5(body))
    partial = target.with_name("blob.bin.partial")
    assert partial.stat().st_size == 120_000 and not target.exists()
    download(f"{server.url}/blob.bin", target, md5=md5(body))
    assert server.ranges == [None, "bytes=120000-"] and target.read_bytes() == body


def test_download_restarts_when_range_is_ignored(server, tmp_path):
    body = server.files["/blob.bin"]
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.partial").write_bytes(b"x" * 5000)
    server.honour_range = False
    download(f"{server.url}/blob.bin", target, md5=md5(body))
    assert target.read_bytes() == body


def test_download_rejects_a_wrong_checksum(server, tmp_path):
    target = tmp_path / "blob.bin"
    with pytest.raises(WeightsError, match="md5 .* does not match the expected 0+"):
        download(f"{server.url}/blob.bin", target, md5="0" * 32)
    assert not target.exists() and not target.with_name("blob.bin.partial").exists()


def test_download_of_a_complete_partial_file(server, tmp_path):
    body = server.files["/blob.bin"]
    target = tmp_path / "blob.bin"
    target.with_name("blob.bin.partial").write_bytes(body)  # the server answers 416
    download(f"{server.url}/blob.bin", target, md5=md5(body))
    assert target.read_bytes() == body


def test_dataset_download_extracts_atomically(server, tmp_path, monkeypatch, capsys):
    """`bench data download --task cub` against a tiny CUB archive: md5, extraction, verify."""
    from bench.tasks.cub import CUB

    source = tmp_path / "source"
    cub_tree(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "CUB_200_2011", "CUB_200_2011")
    server.files["/CUB_200_2011.tgz"] = archive.read_bytes()
    good = data.Download(f"{server.url}/CUB_200_2011.tgz?download=1",
                         md5(archive.read_bytes()), creates="CUB_200_2011")
    root = tmp_path / "data"
    monkeypatch.setattr(CUB, "downloads", (good,))
    assert data.download("cub", root, expected_counts=CUB_COUNTS) == []
    assert sorted(p.name for p in root.iterdir()) == ["CUB_200_2011"]  # archive and temp gone
    assert data.verify("cub", root, full=True, expected_counts=CUB_COUNTS) == []

    bad_root = tmp_path / "bad"
    monkeypatch.setattr(CUB, "downloads", (data.Download(good.url, "0" * 32, "CUB_200_2011"),))
    from bench.cli import main

    capsys.readouterr()  # the first download's progress bars
    assert main(["data", "download", "--task", "cub", "--data-root", str(bad_root)]) == 2
    err = capsys.readouterr().err  # the progress bar, then one line, like every usage error
    [line] = [line for line in err.splitlines() if line.startswith("bench")]
    assert line.startswith("bench: error: ") and "md5" in line and "Traceback" not in err
    assert not (bad_root / "CUB_200_2011").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_extraction_refuses_members_that_leave_the_data_folder(tmp_path, kind):
    import io

    from bench.task import DatasetError

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        if kind == "symlink":
            member = tarfile.TarInfo("CUB_200_2011/escape")
            member.type, member.linkname = tarfile.SYMTYPE, "../../outside"
            tar.addfile(member)
        else:
            name = "../outside.txt" if kind == "dotdot" else str(tmp_path / "outside.txt")
            member = tarfile.TarInfo(name)
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match="refusing archive member"):
        data.extract(archive, dest)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "outside").exists()
    assert list(dest.iterdir()) == []  # the temporary folder is gone too


def parse(argv: list[str]) -> argparse.Namespace:
    from bench.cli import build_parser

    return build_parser().parse_args(["data", *argv])


def test_verify_command_exit_codes_and_messages(tmp_path, capsys):
    args = parse(["verify", "--task", "cub", "--data-root", str(tmp_path)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert f"missing {tmp_path / 'CUB_200_2011' / 'images.txt'}" in out
    assert "bench data download --task cub" in out

    cub_tree(tmp_path)
    args = parse(["verify", "--task", "cub", "--data-root", str(tmp_path)])
    assert args.func(args) == 1
    assert "found 18 train images" in capsys.readouterr().out  # official counts by default

    counts = f"expected_counts={json.dumps(CUB_COUNTS)}"
    args = parse(["verify", "--task", "cub", "--data-root", str(tmp_path), "--task-arg", counts])
    assert args.func(args) == 0
    assert "cub: OK (train 15, val 3, test 12 images, 3 classes)" in capsys.readouterr().out

    image = next((tmp_path / "CUB_200_2011" / "images").glob("*/*.jpg"))
    image.write_bytes(image.read_bytes()[:200])
    args = parse(["verify", "--task", "cub", "--data-root", str(tmp_path), "--task-arg", counts])
    assert args.func(args) == 0  # the cheap check does not decode
    args = parse(["verify", "--task", "cub", "--data-root", str(tmp_path), "--task-arg", counts,
                  "--full"])
    assert args.func(args) == 1
    assert f"cannot decode image {image}" in capsys.readouterr().out


@pytest.mark.parametrize("task,words", [
    ("cars", ["official URL is dead", "kaggle datasets download"]),
    ("imagenet", ["https://image-net.org", "ILSVRC2012_img_train.tar"]),
])
def test_manual_datasets_print_instructions(task, words, tmp_path, capsys):
    from bench.cli import main

    assert main(["data", "download", "--task", task, "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert all(w in captured.out for w in words)
    assert str(tmp_path) in captured.out
    [line] = captured.err.splitlines()
    assert line == (f"bench: error: {task}: the data must be fetched by hand, as the instructions "
                    f"of `bench data download --task {task}` say")


def test_data_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, bench.features.data; heavy = {'torch', 'torchvision', 'PIL', 'scipy', 'numpy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_folder_download_has_no_source(tmp_path, capsys):
    (tmp_path / "tree").mkdir()
    from bench.cli import main

    assert main(["data", "download", "--task", f"folder:{tmp_path / 'tree'}"]) == 2
    assert "no public download" in capsys.readouterr().err
    assert Path(tmp_path / "tree").is_dir()
