"""Released weights as typed configs: every preset that downloads declares what (URL or Hub repo
at a pinned revision, sizes and digests where published), the download is checked against it,
and a dry run finds what is already here without touching the network."""

from __future__ import annotations

import hashlib

import pytest

from bench.features.weights import (Weights, WeightsError, WeightsFile, locate, resolve,
                                    weights_dir)
from bench.registry import backbones
from tests.test_data_cli import Server

# presets that load the user's weights (a family taking a name or flags and a file)
USER_WEIGHTS = {"adm", "diffusers", "timm", "open_clip", "hf"}


@pytest.fixture
def server():
    s = Server({"/release.pt": b"weights " * 4096})
    yield s
    s.close()


def test_every_preset_that_downloads_declares_its_release_typed():
    """And what it declares is what the family loads: the factory's default file or Hub repo,
    the licence shown by `bench list`, and for timm and open_clip tags the Hub repo the library
    itself names in its pretrained config."""
    import open_clip
    import timm

    for name in backbones.names():
        entry = backbones.entry(name)
        random = entry.licence.startswith("none")
        assert (entry.released is None) == (random or name in USER_WEIGHTS), name
        released = entry.released
        if released is None:
            continue
        assert isinstance(released, Weights) and released.files, name
        assert entry.licence == released.licence and released.origin and released.paper, name
        for file in released.files:
            assert file.size is None or file.size > 0, name
            assert file.sha256 is None or len(file.sha256) == 64, name
        if "weights" in entry.defaults:  # ADM: the URL the preset loads
            assert entry.defaults["weights"] == released.url, name
        if "source" in entry.defaults:  # diffusers: the Hub repo at its pinned revision
            assert (entry.defaults["source"], entry.defaults["revision"]) == (
                released.hub_id, released.revision), name
        if entry.module.endswith((".mae", ".supervised")) and released.hub_id:
            tag = entry.defaults.get("model", entry.factory.__defaults__[0])
            assert released.hub_id == timm.models.get_pretrained_cfg(tag).hf_hub_id, name
        if entry.module.endswith(".clip"):
            tag = open_clip.get_pretrained_cfg(entry.defaults.get("model", "ViT-B-16"), "openai")
            assert f"{released.hub_id}/" == tag["hf_hub"], name
    celebahq = backbones.entry("ddpm-celebahq").released
    assert celebahq.size == 454_853_117 and celebahq.files[0].sha256.startswith("efff8971")
    assert backbones.entry("sd-1.5").released.size == 3_438_167_540 + 334_643_276 + 492_265_874


def test_a_release_is_checked_when_downloaded_and_when_found_in_the_cache(server, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # downloads on (from 127.0.0.1 only)
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    body = server.files["/release.pt"]
    url = f"{server.url}/release.pt"
    Weights((WeightsFile(url, len(body), hashlib.sha256(body).hexdigest()),))
    path = resolve(url)
    assert path.read_bytes() == body
    path.write_bytes(body[:-1] + b"!")  # changed in place: not the published file any more
    with pytest.raises(WeightsError, match="not the published .* delete it"):
        resolve(url)
    path.unlink()
    Weights((WeightsFile(url, len(body) + 1),))  # a release stating another size
    with pytest.raises(WeightsError, match=f"{len(body)} bytes, not the published {len(body) + 1}"):
        resolve(url)
    assert not path.exists() and not path.with_name(path.name + ".partial").exists()


def test_locate_says_what_is_here_and_what_a_run_would_download_offline(tmp_path, monkeypatch):
    """The dry run's question, answered from $BENCH_WEIGHTS and the Hugging Face cache alone:
    any network access fails the test."""
    import socket

    import huggingface_hub.constants as constants

    from tests.test_hub_presets import write_repo

    def no_network(*args, **kwargs):
        raise AssertionError("locate touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    url_file = WeightsFile("https://example.org/models/net.pt", 3_000_000_000)
    single = Weights((url_file,))
    found = locate(single)
    assert found.missing == [url_file] and found.download_bytes == 3_000_000_000
    assert found.describe() == "would download: https://example.org/models/net.pt (3.00 GB)"
    (weights_dir()).mkdir(parents=True, exist_ok=True)
    (weights_dir() / "net.pt").write_bytes(b"x")
    assert locate(single).files[0].path == weights_dir() / "net.pt"
    assert locate(single).describe() == "weights present" and locate(single).download_bytes == 0

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    revision = "0" * 40
    write_repo(cache, "org/model", revision, {"unet/model.bin": {}, "config.json": {}})
    hub = Weights((WeightsFile("unet/model.bin", 10), WeightsFile("vae/model.safetensors",
                                                                   alternatives=("vae/x.bin",)),
                   WeightsFile("text/model.bin", 5)), hub_id="org/model", revision=revision)
    found = locate(hub)
    assert found.files[0].path.is_file() and found.files[0].path.parts[-3:] == (
        revision, "unet", "model.bin")
    assert [f.name for f in found.missing] == ["vae/model.safetensors", "text/model.bin"]
    assert found.download_bytes is None  # one missing size is not published
    assert found.describe() == ("would download from org/model: vae/model.safetensors, "
                                "text/model.bin (0.00 GB + 1 size not published)")
    write_repo(cache, "org/model", revision, {"vae/x.bin": {}, "text/model.bin": {}})
    assert locate(hub).describe() == "weights present"  # an alternative name counts
    assert locate(Weights(hub.files, hub_id="org/model", revision="1" * 40)).missing == list(
        hub.files)  # another revision is not these weights


def test_a_preset_given_other_weights_does_not_load_its_release():
    released = backbones.entry("diffusion").released
    assert released.applies({"t": 150}) and not released.applies({"weights": "mine.pt"})
    assert not backbones.entry("sd-1.5").released.applies({"source": "my/repo"})
