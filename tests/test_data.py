"""Spec for simcore.data: IDX parsing, where data comes from, downloads, tokens.

Every test builds its own small IDX files in tmp_path; none touches the network (urlopen is
replaced for every test) or the user's cache (XDG_CACHE_HOME points into tmp_path). The one
test on the real MNIST files runs only when SIMCORE_DATA names a folder holding them.
"""

import dataclasses
import gzip
import hashlib
import io
import os
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

from simcore import data

# Read before the autouse fixture below removes it from the environment.
REAL_DATA = os.environ.get("SIMCORE_DATA")

MIRRORS = data.DATASETS["mnist"].mirrors
TEST_STEMS = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- helpers


def idx_bytes(magic, dims, payload):
    """An IDX file: big-endian magic, one big-endian uint32 per dimension, then payload."""
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(payload)


def write(path, content):
    """Write bytes to path, gzipped when the name ends in .gz; return the path."""
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def image_file(images):
    return idx_bytes(0x803, images.shape, images.tobytes())


def label_file(labels):
    return idx_bytes(0x801, labels.shape, labels.tobytes())


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 4), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.array([3, 0, 9, 1, 7], dtype=np.uint8)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No SIMCORE_DATA, a cache inside tmp_path, and a network that fails the test if used."""
    monkeypatch.delenv("SIMCORE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def no_network(*args, **kwargs):
        raise AssertionError("this test must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


class FakeResponse(io.BytesIO):
    def __init__(self, body):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


class FakeMirrors:
    """Stands in for urllib.request.urlopen: maps a URL to bytes to serve or an error to raise."""

    def __init__(self, routes):
        self.routes = routes
        self.requested = []

    def __call__(self, request, timeout=None):
        url = getattr(request, "full_url", request)
        self.requested.append(url)
        answer = self.routes.get(url, urllib.error.URLError("no route in this test"))
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer)


@pytest.fixture
def published(images, labels, monkeypatch):
    """Small .gz test-split files, registered as the published MNIST files with their sums."""
    files = {
        TEST_STEMS[0] + ".gz": gzip.compress(image_file(images)),
        TEST_STEMS[1] + ".gz": gzip.compress(label_file(labels)),
    }
    sums = {name: ("sha256", hashlib.sha256(body).hexdigest()) for name, body in files.items()}
    mnist = dataclasses.replace(data.DATASETS["mnist"], checksums=sums)
    monkeypatch.setitem(data.DATASETS, "mnist", mnist)
    return files


def serve(monkeypatch, routes):
    fake = FakeMirrors(routes)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    return fake


def assert_fault(excinfo, path, *words):
    """The DataError message names the file and each word describing the fault."""
    message = str(excinfo.value)
    assert str(path) in message
    for word in words:
        assert word in message


# ----------------------------------------------------------------------------- IDX parsing


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_images_round_trip_raw_and_gzipped(tmp_path, images, suffix):
    path = write(tmp_path / ("img" + suffix), image_file(images))
    loaded = data.load_idx_images(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_labels_round_trip_raw_and_gzipped(tmp_path, labels, suffix):
    path = write(tmp_path / ("lbl" + suffix), label_file(labels))
    loaded = data.load_idx_labels(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, labels)


def test_gzip_is_recognised_by_content_not_name(tmp_path, images):
    path = tmp_path / "img"
    path.write_bytes(gzip.compress(image_file(images)))
    np.testing.assert_array_equal(data.load_idx_images(path), images)


def test_loaded_arrays_are_writable(tmp_path, images):
    loaded = data.load_idx_images(write(tmp_path / "img.gz", image_file(images)))
    assert loaded.flags.writeable


def test_data_error_is_a_value_error():
    assert issubclass(data.DataError, ValueError)


def test_missing_file_names_file(tmp_path):
    path = tmp_path / "nowhere-idx3-ubyte"
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "cannot open")


def test_bad_magic_names_file_and_fault(tmp_path, labels):
    path = write(tmp_path / "img.gz", label_file(labels))  # a label file where images belong
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "bad magic number", "0x00000801", "0x00000803")


def test_non_idx_file_names_file_and_fault(tmp_path):
    path = write(tmp_path / "img", b"<html>Not Found</html>")
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "bad magic number")


def test_non_byte_data_type_names_file_and_fault(tmp_path):
    path = write(tmp_path / "img", idx_bytes(0x0D03, (1, 2, 2), bytes(16)))  # 0x0D = float
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "data type 0x0D", "unsigned byte")


def test_wrong_number_of_dimensions_names_file_and_fault(tmp_path):
    path = write(tmp_path / "img.gz", idx_bytes(0x802, (3, 4), bytes(12)))
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "2 dimension(s)", "3 dimension(s)")


def test_non_square_images_name_file_and_fault(tmp_path):
    path = write(tmp_path / "img", idx_bytes(0x803, (2, 4, 5), bytes(40)))
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "4x5", "square")


def test_zero_sized_images_name_file_and_fault(tmp_path):
    path = write(tmp_path / "img", idx_bytes(0x803, (2, 0, 0), b""))
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "0x0")


def test_zero_count_names_file_and_fault(tmp_path):
    path = write(tmp_path / "lbl", idx_bytes(0x801, (0,), b""))
    with pytest.raises(data.DataError) as e:
        data.load_idx_labels(path)
    assert_fault(e, path, "0 labels")


def test_truncated_header_names_file_and_fault(tmp_path):
    path = write(tmp_path / "img.gz", struct.pack(">II", 0x803, 5))  # rows, cols missing
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "truncated")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_image_file_names_file_and_fault(tmp_path, images, suffix):
    path = write(tmp_path / ("img" + suffix), image_file(images)[:-10])
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "truncated", "promises 80 pixel bytes", "has 70")


def test_truncated_label_file_names_file_and_fault(tmp_path, labels):
    path = write(tmp_path / "lbl.gz", label_file(labels)[:-1])
    with pytest.raises(data.DataError) as e:
        data.load_idx_labels(path)
    assert_fault(e, path, "truncated", "promises 5 label bytes", "has 4")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_oversized_image_file_names_file_and_fault(tmp_path, images, suffix):
    path = write(tmp_path / ("img" + suffix), image_file(images) + b"\0" * 3)
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "oversized", "promises 80 pixel bytes", "trailing data")


def test_cut_off_gzip_names_file_and_fault(tmp_path, images):
    path = tmp_path / "img.gz"
    path.write_bytes(gzip.compress(image_file(images))[:-12])  # loses the CRC trailer and more
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "corrupt gzip")


def test_garbled_gzip_names_file_and_fault(tmp_path, images):
    body = bytearray(gzip.compress(image_file(images), mtime=0))
    body[12:20] = b"\xff" * 8  # gzip header intact, deflate data destroyed
    path = tmp_path / "img.gz"
    path.write_bytes(bytes(body))
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "corrupt gzip")


def test_gzip_crc_mismatch_names_file_and_fault(tmp_path, images):
    body = bytearray(gzip.compress(image_file(images)))
    body[-8] ^= 0xFF  # the stored CRC32 of the uncompressed data
    path = tmp_path / "img.gz"
    path.write_bytes(bytes(body))
    with pytest.raises(data.DataError) as e:
        data.load_idx_images(path)
    assert_fault(e, path, "corrupt gzip", "CRC")


def test_label_out_of_range_names_file_and_fault(tmp_path):
    path = write(tmp_path / "lbl.gz", label_file(np.array([1, 2, 10, 3], dtype=np.uint8)))
    with pytest.raises(data.DataError) as e:
        data.load_idx_labels(path)
    assert_fault(e, path, "label 10 at index 2", "outside 0..9")


def test_label_range_follows_number_of_classes(tmp_path):
    path = write(tmp_path / "lbl", label_file(np.array([0, 4], dtype=np.uint8)))
    with pytest.raises(data.DataError) as e:
        data.load_idx_labels(path, num_classes=4)
    assert_fault(e, path, "outside 0..3")


# ----------------------------------------------------------------------------- tokens


def test_to_tokens_puts_label_in_pixel_0_and_keeps_raster_order(images, labels):
    tokens = data.to_tokens(images, labels)
    assert tokens.shape == (5, 16) and tokens.dtype == np.uint8
    np.testing.assert_array_equal(tokens[:, 0], labels)
    np.testing.assert_array_equal(tokens[:, 1:], images.reshape(5, 16)[:, 1:])
    assert tokens[2, 4 * 1 + 3] == images[2, 1, 3]  # row 1, column 3 -> position 7


def test_to_tokens_leaves_images_untouched(images, labels):
    before = images.copy()
    data.to_tokens(images, labels)
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("shape", [(5, 16), (5, 4, 3), (5, 4, 4, 1)])
def test_to_tokens_rejects_images_not_shaped_n_s_s(shape, labels):
    with pytest.raises(ValueError, match=r"\[N, S, S\]"):
        data.to_tokens(np.zeros(shape, np.uint8), labels)


def test_to_tokens_rejects_label_count_mismatch(images, labels):
    with pytest.raises(ValueError, match="labels must have shape"):
        data.to_tokens(images, labels[:4])


def test_to_tokens_rejects_non_uint8_images(images, labels):
    with pytest.raises(ValueError, match="uint8"):
        data.to_tokens(images.astype(np.float32), labels)


# ----------------------------------------------------------------------------- local folders


def test_find_file_accepts_raw_or_gzipped_name(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "b.gz").write_bytes(b"")
    assert data.find_file(tmp_path, "a") == str(tmp_path / "a")
    assert data.find_file(tmp_path, "b") == str(tmp_path / "b.gz")


def test_find_file_returns_none_when_neither_exists(tmp_path):
    assert data.find_file(tmp_path, "a") is None


def write_split(folder, images, labels, suffix=".gz"):
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / (TEST_STEMS[0] + suffix), image_file(images))
    write(folder / (TEST_STEMS[1] + suffix), label_file(labels))


def test_load_split_reads_data_dir_with_raw_files(tmp_path, images, labels):
    write_split(tmp_path / "mine", images, labels, suffix="")
    got_images, got_labels = data.load_split(split="test", data_dir=tmp_path / "mine")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_load_split_reads_simcore_data_when_no_dir_given(tmp_path, monkeypatch, images, labels):
    write_split(tmp_path / "env", images, labels)
    monkeypatch.setenv("SIMCORE_DATA", str(tmp_path / "env"))
    got_images, _ = data.load_split(split="test")
    np.testing.assert_array_equal(got_images, images)


def test_data_dir_argument_wins_over_simcore_data(tmp_path, monkeypatch, images, labels):
    write_split(tmp_path / "arg", images, labels)
    monkeypatch.setenv("SIMCORE_DATA", str(tmp_path / "empty"))
    got_images, _ = data.load_split(split="test", data_dir=tmp_path / "arg")
    np.testing.assert_array_equal(got_images, images)


def test_data_dir_missing_files_names_folder_and_files_without_downloading(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test", data_dir=folder)  # the network fixture fails if asked
    assert_fault(e, folder, "missing", TEST_STEMS[0], TEST_STEMS[1], "--data")


def test_simcore_data_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCORE_DATA", str(tmp_path / "absent"))
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test")
    assert_fault(e, tmp_path / "absent", "SIMCORE_DATA", "no such folder")


def test_simcore_data_that_is_not_a_folder_is_named(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_bytes(b"x")
    monkeypatch.setenv("SIMCORE_DATA", str(tmp_path / "a-file"))
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test")
    assert_fault(e, tmp_path / "a-file", "SIMCORE_DATA", "not a folder")


def test_image_label_count_mismatch_names_both_files(tmp_path, images, labels):
    write_split(tmp_path, images, labels[:4])
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test", data_dir=tmp_path)
    assert_fault(e, tmp_path / (TEST_STEMS[0] + ".gz"), "5 images but 4 labels")
    assert str(tmp_path / (TEST_STEMS[1] + ".gz")) in str(e.value)


def test_unknown_dataset_or_split_is_rejected():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_split(dataset="cifar")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split(split="valid")


# ----------------------------------------------------------------------------- cache + download


def test_cache_dir_follows_xdg_cache_home(tmp_path):
    assert data.cache_dir("mnist") == str(tmp_path / "xdg" / "simcore" / "mnist")


def test_cache_dir_defaults_to_home_dot_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "simcore" / "fashion-mnist"
    assert data.cache_dir("fashion-mnist") == str(expected)


def test_every_dataset_has_mirrors_and_a_checksum_per_file():
    names = {stem + ".gz" for pair in data.SPLITS.values() for stem in pair}
    for spec in data.DATASETS.values():
        assert len(spec.mirrors) >= 2 and all(m.endswith("/") for m in spec.mirrors)
        assert set(spec.checksums) == names
        for algorithm, hexdigest in spec.checksums.values():
            assert len(hexdigest) == hashlib.new(algorithm).digest_size * 2


def test_download_falls_back_to_next_mirror_and_fills_cache(monkeypatch, published, images):
    routes = {MIRRORS[1] + name: body for name, body in published.items()}
    fake = serve(monkeypatch, routes)  # MIRRORS[0] answers URLError
    got_images, _ = data.load_split(split="test", progress=False)
    np.testing.assert_array_equal(got_images, images)
    assert fake.requested[:2] == [MIRRORS[0] + TEST_STEMS[0] + ".gz",
                                  MIRRORS[1] + TEST_STEMS[0] + ".gz"]
    assert sorted(os.listdir(data.cache_dir("mnist"))) == sorted(published)


def test_download_rejects_checksum_mismatch_and_tries_next_mirror(monkeypatch, published, images):
    routes = {MIRRORS[0] + name: body[:-1] + b"!" for name, body in published.items()}
    routes.update({MIRRORS[1] + name: body for name, body in published.items()})
    serve(monkeypatch, routes)
    got_images, _ = data.load_split(split="test", progress=False)
    np.testing.assert_array_equal(got_images, images)


def test_checksum_mismatch_everywhere_is_reported_and_leaves_nothing_behind(monkeypatch,
                                                                             published):
    serve(monkeypatch, {m + name: b"tampered" for m in MIRRORS for name in published})
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test", progress=False)
    assert_fault(e, TEST_STEMS[0] + ".gz", "checksum mismatch")
    assert os.listdir(data.cache_dir("mnist")) == []  # no bad file, no temp file


def test_all_mirrors_failing_lists_each_mirror_and_mentions_data_flag(monkeypatch, published):
    serve(monkeypatch, {MIRRORS[2] + name: urllib.error.HTTPError(
        MIRRORS[2] + name, 403, "Forbidden", {}, None) for name in published})
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test", progress=False)
    message = str(e.value)
    assert "--data" in message and "SIMCORE_DATA" in message
    assert all(m + TEST_STEMS[0] + ".gz" in message for m in MIRRORS)
    assert "no route in this test" in message and "403" in message
    assert all(stem in message for pair in data.SPLITS.values() for stem in pair)


def test_verified_cache_is_used_without_network(published, images):
    folder = data.cache_dir("mnist")
    os.makedirs(folder)
    for name, body in published.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(body)
    got_images, _ = data.load_split(split="test", progress=False)  # network would fail the test
    np.testing.assert_array_equal(got_images, images)


def test_damaged_cache_file_is_downloaded_again(monkeypatch, published, images):
    folder = data.cache_dir("mnist")
    os.makedirs(folder)
    for name in published:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"half a file")
    serve(monkeypatch, {MIRRORS[0] + name: body for name, body in published.items()})
    got_images, _ = data.load_split(split="test", progress=False)
    np.testing.assert_array_equal(got_images, images)


def test_no_download_without_cache_says_how_to_point_at_data(published):
    with pytest.raises(data.DataError) as e:
        data.load_split(split="test", download=False)
    assert_fault(e, TEST_STEMS[0] + ".gz", "downloading is off", "--data")


def test_download_draws_progress_bar_on_stderr(monkeypatch, capsys, published):
    serve(monkeypatch, {MIRRORS[0] + name: body for name, body in published.items()})
    data.load_split(split="test", progress=True)
    err = capsys.readouterr().err
    assert f"mnist {TEST_STEMS[0]}.gz [" + "#" * 24 + "]" in err and "100%" in err
    assert err.endswith("\n")


def test_fashion_mnist_checks_sha256_of_the_published_files():
    sums = data.DATASETS["fashion-mnist"].checksums
    assert sums["train-images-idx3-ubyte.gz"] == (
        "sha256", "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc")


# ----------------------------------------------------------------------------- real data


def test_real_mnist_test_split_loads_when_simcore_data_is_set():
    if not REAL_DATA:
        pytest.skip("set SIMCORE_DATA to a folder with the MNIST files to run this")
    images, labels = data.load_split("mnist", "test", data_dir=REAL_DATA)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.min() == 0 and labels.max() == 9
    assert not images[:, 0, 0].any()  # pixel 0 is background, so the label may take it
    tokens = data.to_tokens(images, labels)
    assert tokens.shape == (10000, 784)
    np.testing.assert_array_equal(tokens[:, 0], labels)
