"""Run directory preparation, the run file and PNG output (no MPI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pcpp_mpi import SCHEMA_VERSION
from pcpp_mpi.output import (
    OutputError,
    RunFile,
    SchemaError,
    open_run_file,
    prepare_run_dir,
    read_run,
    write_png,
)
from pcpp_mpi.output.provenance import collect_package_versions, git_revision

CONFIG = "model:\n  name: tiny\nsteps: 4\n"
PROVENANCE = {
    "mpi_library": "Open MPI v5.0.11",
    "mpi_cuda_aware": None,
    "n_ranks": 2,
    "ratio": 0.3,
    "flag": True,
    "hosts": ["a", "b"],
    "packages": {"torch": "2.13", "h5py": "3.16"},
    "looks_like_json": "[1, 2]",
}


def _image(h: int = 8, w: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _create(run_dir: Path, n_ranks: int = 2) -> RunFile:
    return RunFile.create(
        run_dir / "run.h5",
        config_yaml=CONFIG,
        provenance=PROVENANCE,
        n_ranks=n_ranks,
        rank_files=[f"rank-{r:04d}.h5" for r in range(n_ranks)],
    )


# -- prepare_run_dir ---------------------------------------------------------------------------


def test_prepare_creates_missing_dir_with_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    lock = prepare_run_dir(target, overwrite=False)
    assert lock.run_dir == target.absolute()
    assert target.is_dir()
    assert [p.name for p in target.iterdir()] == [".pcpp-mpi.lock"]  # the probe is gone
    lock.release()
    assert list(target.iterdir()) == []


def test_prepare_accepts_existing_empty_dir(tmp_path: Path) -> None:
    lock = prepare_run_dir(tmp_path, overwrite=False)
    assert lock.run_dir == tmp_path.absolute()
    lock.release()


def test_prepare_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError) as excinfo:
        prepare_run_dir(tmp_path, overwrite=False)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert "not empty" in message
    assert "--overwrite" in message
    assert "--out" in message
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_prepare_refuses_our_own_files_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "run.h5").write_bytes(b"old")
    with pytest.raises(OutputError, match="not empty"):
        prepare_run_dir(tmp_path, overwrite=False)
    assert (tmp_path / "run.h5").read_bytes() == b"old"


def test_overwrite_removes_only_our_files(tmp_path: Path) -> None:
    ours = ["run.h5", "rank-0000.h5", "rank-0001.h5", "image-0000.png", "image-0012.png"]
    theirs = [
        "notes.txt",
        "run.h5.bak",
        "myrun.h5",
        "rank-0000.h5.txt",
        "image-0000.jpg",
        "config.yaml",
        "image.png",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.h5").write_text("nested")

    prepare_run_dir(tmp_path, overwrite=True).release()

    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted([*theirs, "sub"])
    for name in theirs:
        assert (tmp_path / name).read_text() == name
    assert (tmp_path / "sub" / "run.h5").read_text() == "nested"


def test_overwrite_does_not_follow_symlinked_files(tmp_path: Path) -> None:
    outside = tmp_path / "precious.h5"
    outside.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.h5").symlink_to(outside)
    prepare_run_dir(run_dir, overwrite=True).release()
    assert not (run_dir / "run.h5").exists()
    assert outside.read_text() == "precious"


def test_overwrite_refuses_directory_named_like_our_file(tmp_path: Path) -> None:
    (tmp_path / "run.h5").mkdir()
    with pytest.raises(OutputError, match="directory"):
        prepare_run_dir(tmp_path, overwrite=True)
    assert (tmp_path / "run.h5").is_dir()


def test_prepare_refuses_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(OutputError) as excinfo:
        prepare_run_dir(target, overwrite=True)
    assert str(target) in str(excinfo.value)
    assert target.read_text() == "x"


def test_prepare_cannot_create_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "run"
    with pytest.raises(OutputError) as excinfo:
        prepare_run_dir(target, overwrite=False)
    assert str(target) in str(excinfo.value)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_prepare_refuses_unwritable_dir(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable") as excinfo:
            prepare_run_dir(target, overwrite=False)
        assert str(target) in str(excinfo.value)
    finally:
        target.chmod(0o755)


def test_prepare_refuses_when_probe_cannot_be_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.access can lie (root, ACLs, read-only mounts): the probe file decides."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pcpp_mpi.output.run_dir.tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match="not writable") as excinfo:
        prepare_run_dir(tmp_path, overwrite=False)
    assert str(tmp_path) in str(excinfo.value)


# -- run file ----------------------------------------------------------------------------------


def test_run_file_round_trip(tmp_path: Path) -> None:
    images = [_image(seed=i) for i in range(3)]
    latents = [
        np.random.default_rng(i).standard_normal((4, 2, 3)).astype(np.float32) for i in (0, 1)
    ]
    with _create(tmp_path) as run:
        assert run.status == "running"
        for i, image in enumerate(images):
            run.add_image(i, image, prompt=f"a prompt {i} ✓", seed=100 + i)
        for i, latent in enumerate(latents):
            run.add_latent(i, latent)
        run.set_status("complete")
    assert run.closed

    info = read_run(tmp_path / "run.h5")
    assert info.schema_version == SCHEMA_VERSION
    assert info.status == "complete"
    assert info.error is None
    assert info.created and info.finished
    assert info.n_ranks == 2
    assert info.config_yaml == CONFIG
    assert info.provenance == PROVENANCE
    assert isinstance(info.provenance["flag"], bool)
    assert isinstance(info.provenance["n_ranks"], int)
    assert info.rank_files == ["rank-0000.h5", "rank-0001.h5"]
    assert [img.name for img in info.images] == ["image-0000", "image-0001", "image-0002"]
    for i, img in enumerate(info.images):
        name, array, prompt, seed = img  # a plain tuple too
        assert name == img.name
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, images[i])
        assert prompt == f"a prompt {i} ✓"
        assert seed == 100 + i
    assert sorted(info.latents) == ["latent-0000", "latent-0001"]
    for i, latent in enumerate(latents):
        stored = info.latents[f"latent-{i:04d}"]
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, latent)


def test_run_file_layout(tmp_path: Path) -> None:
    with _create(tmp_path) as run:
        run.add_image(7, _image(), prompt="p", seed=1)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert isinstance(f.attrs["schema_version"], (int, np.integer))
        assert f.attrs["status"] == "running"
        assert f["config"].asstr()[()] == CONFIG
        assert f["provenance"].attrs["mpi_library"] == "Open MPI v5.0.11"
        assert f["images/image-0007"].shape == (8, 12, 3)
        assert f["images/image-0007"].attrs["prompt"] == "p"
        link = f["ranks"].get("rank-0001", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "rank-0001.h5"
        assert link.path == "/"


def test_create_refuses_existing_run_file(tmp_path: Path) -> None:
    (tmp_path / "run.h5").write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        _create(tmp_path)
    assert (tmp_path / "run.h5").read_bytes() == b"old"


def test_create_checks_rank_file_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rank file"):
        RunFile.create(
            tmp_path / "run.h5", config_yaml="", provenance={}, n_ranks=3, rank_files=["a.h5"]
        )


def test_absolute_rank_file_paths_are_linked_relatively(tmp_path: Path) -> None:
    run = RunFile.create(
        tmp_path / "run.h5",
        config_yaml="",
        provenance={},
        n_ranks=1,
        rank_files=[str(tmp_path / "rank-0000.h5")],
    )
    run.close()
    assert read_run(tmp_path / "run.h5").rank_files == ["rank-0000.h5"]


def test_bad_images_and_latents_are_rejected(tmp_path: Path) -> None:
    with _create(tmp_path) as run:
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            run.add_image(0, _image().astype(np.float32), prompt="p", seed=0)
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            run.add_image(0, np.zeros((4, 4), dtype=np.uint8), prompt="p", seed=0)
        with pytest.raises(ValueError, match=r"\(C, h, w\)"):
            run.add_latent(0, np.zeros((4, 4), dtype=np.float32))
        run.add_image(0, _image(), prompt="p", seed=0)
        with pytest.raises(OutputError, match="already holds image-0000"):
            run.add_image(0, _image(), prompt="p", seed=0)
        run.set_status("complete")  # a refused duplicate does not taint the run
    assert read_run(tmp_path / "run.h5").status == "complete"


def _status_seen_by_another_process(path: Path) -> str:
    code = (
        "import sys, h5py\n"
        "with h5py.File(sys.argv[1], 'r', locking=False) as f:\n"
        "    print(f.attrs['status'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("status", ["complete", "failed", "interrupted"])
def test_status_lifecycle(tmp_path: Path, status: str) -> None:
    run = _create(tmp_path)
    assert run.status == "running"
    assert _status_seen_by_another_process(tmp_path / "run.h5") == "running"
    error = None if status == "complete" else f"{status} because of reasons"
    run.set_status(status, error=error)  # type: ignore[arg-type]
    assert run.status == status
    # Flushed: another process sees it before the writer closes the file.
    assert _status_seen_by_another_process(tmp_path / "run.h5") == status
    run.close()
    run.close()  # idempotent
    info = read_run(tmp_path / "run.h5")
    assert info.status == status
    assert info.error == error
    assert info.finished is not None


def test_status_can_be_revised_and_error_cleared(tmp_path: Path) -> None:
    with _create(tmp_path) as run:
        run.set_status("failed", error="boom")
        run.set_status("complete")
    info = read_run(tmp_path / "run.h5")
    assert (info.status, info.error) == ("complete", None)


def test_unknown_status_refused(tmp_path: Path) -> None:
    with _create(tmp_path) as run, pytest.raises(ValueError, match="status must be one of"):
        run.set_status("done")  # type: ignore[arg-type]


def test_context_marks_failed_or_interrupted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ZeroDivisionError), _create(tmp_path / "a"):
        _ = 1 / 0
    info = read_run(tmp_path / "a" / "run.h5")
    assert info.status == "failed"
    assert info.error is not None and "ZeroDivisionError" in info.error

    with pytest.raises(KeyboardInterrupt), _create(tmp_path / "b"):
        raise KeyboardInterrupt
    assert read_run(tmp_path / "b" / "run.h5").status == "interrupted"


def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    run = _create(tmp_path)
    run.close()
    with pytest.raises(OutputError, match="closed"):
        run.add_image(0, _image(), prompt="p", seed=0)
    with pytest.raises(OutputError, match="closed"):
        run.set_status("complete")


def _failing_flush(self: h5py.File) -> None:
    raise OSError(28, "No space left on device")


def test_status_write_failure_raises_and_does_not_claim_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _create(tmp_path)
    run.add_image(0, _image(), prompt="p", seed=0)
    with monkeypatch.context() as patch:
        patch.setattr(h5py.File, "flush", _failing_flush)
        with pytest.raises(OutputError) as excinfo:
            run.set_status("complete")
    message = str(excinfo.value)
    assert "complete" in message and "run.h5" in message
    assert "No space left on device" in message
    # The status was not touched: the file does not claim completion.
    assert run.status == "running"
    with pytest.raises(OutputError, match="refusing to mark"):
        run.set_status("complete")
    run.set_status("failed", error="disk full")
    run.close()
    assert read_run(tmp_path / "run.h5").status == "failed"


def test_image_write_failure_prevents_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _create(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(h5py.File, "flush", _failing_flush)
        with pytest.raises(OutputError, match="image image-0001"):
            run.add_image(1, _image(), prompt="p", seed=0)
    with pytest.raises(OutputError, match="refusing to mark"):
        run.set_status("complete")
    run.set_status("failed", error="could not write image")
    run.close()
    info = read_run(tmp_path / "run.h5")
    assert info.status == "failed"
    assert info.error == "could not write image"


def test_external_links_resolve_once_rank_files_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with _create(run_dir) as run:
        run.set_status("complete")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # links are relative to the run file, not the cwd

    with open_run_file(run_dir / "run.h5") as f:
        assert set(f["ranks"].keys()) == {"rank-0000", "rank-0001"}
        with pytest.raises(KeyError):
            _ = f["ranks/rank-0000"]  # dangling until the rank files exist

    for rank in range(2):
        with h5py.File(run_dir / f"rank-{rank:04d}.h5", "w") as rf:
            rf.attrs["rank"] = rank
            rf["steps"] = np.arange(3) + 10 * rank

    with open_run_file(run_dir / "run.h5") as f:
        for rank in range(2):
            group = f[f"ranks/rank-{rank:04d}"]
            assert group.attrs["rank"] == rank
            np.testing.assert_array_equal(group["steps"][()], np.arange(3) + 10 * rank)


# -- schema versions ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, 999])
def test_unknown_schema_version_refused(tmp_path: Path, version: int) -> None:
    with _create(tmp_path):
        pass
    path = tmp_path / "run.h5"
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = version
    for reader in (open_run_file, read_run):
        with pytest.raises(SchemaError) as excinfo:
            reader(path)
        message = str(excinfo.value)
        assert str(path) in message
        assert f"schema version {version}" in message
        assert f"reads only schema versions {SCHEMA_VERSION}" in message
    assert isinstance(excinfo.value, OutputError)


def test_newer_schema_version_suggests_upgrade(tmp_path: Path) -> None:
    with _create(tmp_path):
        pass
    with h5py.File(tmp_path / "run.h5", "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="newer pcpp-mpi"):
        read_run(tmp_path / "run.h5")


def test_missing_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(SchemaError, match="no schema_version"):
        open_run_file(path)


def test_unreadable_run_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot open run file"):
        open_run_file(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(OutputError, match=r"junk\.h5"):
        read_run(tmp_path / "junk.h5")


# -- PNG and provenance ------------------------------------------------------------------------


def test_write_png_round_trip(tmp_path: Path) -> None:
    image = _image(5, 7)
    path = write_png(tmp_path / "image-0000.png", image, metadata={"prompt": "a cat"})
    with Image.open(path) as png:
        assert png.mode == "RGB"
        assert png.size == (7, 5)
        assert png.text["prompt"] == "a cat"
        np.testing.assert_array_equal(np.asarray(png), image)


def test_write_png_rejects_bad_input_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), dtype=np.float32))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write PNG"):
        write_png(blocker / "x.png", _image())


def test_package_versions() -> None:
    versions = collect_package_versions()
    assert set(versions) == {
        "torch",
        "diffusers",
        "transformers",
        "mpi4py",
        "h5py",
        "numpy",
        "triton",
        "pcpp_mpi",
    }
    assert versions["h5py"] == h5py.__version__
    assert versions["numpy"] == np.__version__
    assert all(isinstance(v, str) and v for v in versions.values())


def test_git_revision_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None


def test_git_revision_of_this_source_tree() -> None:
    revision = git_revision()
    if revision is None:
        pytest.skip("pcpp_mpi is not running from a git checkout")
    head = revision.removesuffix("-dirty")
    assert len(head) == 40
    int(head, 16)
