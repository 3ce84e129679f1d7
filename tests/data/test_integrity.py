"""Checksums of galmorph's own dataset files (galmorph.data.integrity): a damaged synthetic
cache is detected and generated again, never used; each file version is hashed once."""

import os

import h5py
import numpy as np
import pytest
from conftest import next_timestamp

from galmorph.data import integrity, registry, synthetic

N, SIZE, SEED = 12, 32, 3


@pytest.fixture
def hashes(monkeypatch):
    """Every SHA256 of a whole file that galmorph computes, by path."""
    seen = []
    real = integrity.sha256_file

    def counting(path, *args, **kwargs):
        seen.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return seen


def _flip_image_byte(path, image: int) -> None:
    """Invert one byte in the middle of the stored pixels of `image` (in place)."""
    with h5py.File(path, "r") as fh:  # uncompressed chunks of whole images
        rows, size = fh["images"].chunks[0], int(np.prod(fh["images"].shape[1:]))
        chunk = fh["images"].id.get_chunk_info(image // rows)
    offset = chunk.byte_offset + (image % rows) * size + size // 2
    next_timestamp(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def _stored(path):
    with h5py.File(path, "r") as fh:
        return fh["images"][()], fh["ans"][()]


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["plain", "mtime-restored"])
def test_corrupted_synthetic_cache_is_rebuilt(tmp_path, keep_mtime):
    path = synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path)
    fresh_images, fresh_labels = synthetic.generate(N, SIZE, seed=SEED)
    before = path.stat()
    _flip_image_byte(path, N // 2)
    if keep_mtime:  # e.g. a copy with `cp -p`: only the ctime tells that the file changed
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    damaged, _ = _stored(path)
    assert not np.array_equal(damaged, fresh_images)  # the damage is real and h5py reads it silently

    assert synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path) == path
    images, labels = _stored(path)
    assert np.array_equal(images, fresh_images) and np.array_equal(labels, fresh_labels)
    assert integrity.check(path) is None


def test_registry_never_loads_a_damaged_synthetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path))
    first = registry.load("synthetic", "native", synthetic_n=N, seed=SEED)
    path = synthetic.cached_path(N, 69, SEED, 1.0, tmp_path / "synthetic")
    assert first.path == path
    _flip_image_byte(path, 0)
    again = registry.load("synthetic", "native", synthetic_n=N, seed=SEED)
    assert np.array_equal(again.images, first.images) and again.digest() == first.digest()


def test_each_file_version_is_hashed_once(tmp_path, hashes):
    path = synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path)
    assert hashes == [h for h in hashes if h.endswith(".tmp")] and len(hashes) == 1  # the new file, before its rename
    for _ in range(3):
        assert synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path) == path
    assert len(hashes) == 1  # the sidecar's stamp matches: no re-hash

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new file version, same bytes
    for _ in range(3):
        assert synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path) == path
    assert hashes[1:] == [path.name]  # hashed once, found intact, kept (not regenerated)
    assert path.stat().st_mtime_ns == st.st_mtime_ns + 1_000_000_000


def test_truncated_cache_is_caught_from_its_size_and_rebuilt(tmp_path, hashes):
    path = synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    assert "truncated" in integrity.check(path)
    hashes.clear()
    assert synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path) == path
    assert path.stat().st_size == size
    assert len(hashes) == 1 and hashes[0].endswith(".tmp")  # only the regenerated file was hashed
    assert np.array_equal(_stored(path)[0], synthetic.generate(N, SIZE, seed=SEED)[0])


def test_cache_without_checksum_is_not_trusted(tmp_path):
    path = synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path)
    integrity.sidecar_of(path).unlink()
    with h5py.File(path, "a") as fh:  # a same-shaped file of unknown content
        fh["images"][0] = 0
    assert integrity.check(path) == "no checksum recorded"
    synthetic.load_or_generate(N, SIZE, seed=SEED, cache_dir=tmp_path)
    assert np.array_equal(_stored(path)[0], synthetic.generate(N, SIZE, seed=SEED)[0])
    assert integrity.check(path) is None


def test_check_against_an_external_checksum(tmp_path, hashes):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    good = integrity.sha256_file(f)
    hashes.clear()
    assert integrity.check(f) == "no checksum recorded"
    assert integrity.check(f, good, 3000) is None and len(hashes) == 1
    assert integrity.check(f, good, 3000) is None and len(hashes) == 1
    assert "size 3,000 bytes, expected 3,001" in integrity.check(f, good, 3001)
    assert "differs from the recorded" in integrity.check(f, "0" * 64)  # the sidecar's stamp is for another checksum
    assert len(hashes) == 2
    next_timestamp(f)
    f.write_bytes(b"abd" * 1000)
    assert "differs" in integrity.check(f, good)
    assert integrity.check(tmp_path / "nope", good) == "file missing"
