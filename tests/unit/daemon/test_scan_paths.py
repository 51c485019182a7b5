"""``daemon scan`` over hostile paths: symlink loops, dangling links, FIFOs, devices and unreadable files and
folders each get one entry with an error code, nothing blocks, and the walk never stops early. Real files, real
kernel errors; where the test runs as root (which chmod 000 does not stop) the unreadable cases use files in
/proc that refuse root too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from deepsift.daemon.paths import ScanEntry, path_problem
from deepsift.daemon.sources.files import FilesSource, expand_paths, scan_entries, scan_job

pytestmark = pytest.mark.timeout(30)  # a FIFO opened by mistake blocks forever: fail instead of hanging

ROOT_PROOF_UNREADABLE_FILE = Path("/proc/sys/vm/drop_caches")  # mode 0200; sysctl files refuse root a read too
ROOT_PROOF_UNLISTABLE_FOLDER = Path("/proc/1/map_files")  # listing needs CAP_SYS_ADMIN, or to own pid 1


def _refuses(action) -> bool:
    try:
        action()
    except PermissionError:
        return True
    return False


def unreadable_file(folder: Path, name: str) -> Path:
    """A file this user cannot open: mode 000, or (as root) a link to a file even root may not read."""
    path = folder / name
    path.write_bytes(b"secret")
    path.chmod(0)
    if _refuses(lambda: open(path, "rb").close()):
        return path
    path.unlink()
    if not _refuses(lambda: open(ROOT_PROOF_UNREADABLE_FILE, "rb").close()):
        pytest.skip("no file here that this user cannot read")
    path.symlink_to(ROOT_PROOF_UNREADABLE_FILE)
    return path


def unlistable_folder(folder: Path) -> Path:
    """A folder this user cannot list: mode 000, or (as root) one in /proc that refuses root too."""
    path = folder / "locked"
    path.mkdir()
    (path / "inside.mp4").write_bytes(b"x")
    path.chmod(0)
    if _refuses(lambda: os.listdir(path)):
        return path
    path.chmod(0o700)
    (path / "inside.mp4").unlink()
    path.rmdir()
    if not _refuses(lambda: os.listdir(ROOT_PROOF_UNLISTABLE_FOLDER)):
        pytest.skip("no folder here that this user cannot list")
    return ROOT_PROOF_UNLISTABLE_FOLDER


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """Good files around every kind of path that is not a readable file, with media and other names."""
    folder = tmp_path / "uploads"
    (folder / "sub").mkdir(parents=True)
    (folder / "a_first.mp4").write_bytes(b"first")
    (folder / "sub" / "b_inner.PNG").write_bytes(b"inner")
    (folder / "z_last.jpg").write_bytes(b"last")
    (folder / "notes.txt").write_bytes(b"not media")
    (folder / ".hidden.mp4").write_bytes(b"hidden")
    os.symlink("loop_b.mp4", folder / "loop_a.mp4")
    os.symlink("loop_a.mp4", folder / "loop_b.mp4")
    os.symlink("gone.jpg", folder / "dangling.jpg")
    os.mkfifo(folder / "fifo.mp4")
    os.mkfifo(folder / "fifo.log")  # no media suffix: skipped like any non-media name in a folder
    os.symlink("..", folder / "sub" / "up")  # a link to a parent folder: followed, it would loop
    os.symlink("sub", folder / "linked_folder.mp4")  # a symlinked folder, media suffix or not, is not entered
    return folder


def _codes(entries) -> dict[str, str | None]:
    return {str(e.path): e.problem.code if e.problem else None for e in entries}


def test_a_folder_gives_each_media_name_one_entry_and_never_follows_a_link_into_a_loop(hostile_folder):
    # When the folder is walked
    entries = list(scan_entries([hostile_folder]))
    # Then every media name gets exactly one entry, sorted, with the code of what is wrong with it
    f = hostile_folder
    assert _codes(entries) == {
        f"{f}/a_first.mp4": None,
        f"{f}/dangling.jpg": "not_found",
        f"{f}/fifo.mp4": "not_regular_file",
        f"{f}/loop_a.mp4": "symlink_loop",
        f"{f}/loop_b.mp4": "symlink_loop",
        f"{f}/sub/b_inner.PNG": None,
        f"{f}/z_last.jpg": None,
    }
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert "dangling symbolic link to gone.jpg" in entries[1].problem.detail
    assert "named pipe" in entries[2].problem.detail
    # and the folder rule that `daemon submit` shares lists the same paths
    assert expand_paths([f]) == [e.path for e in entries]


def test_named_paths_always_get_an_entry_whatever_they_are(hostile_folder, tmp_path):
    f = hostile_folder
    named = [Path("/dev/null"), f / "fifo.log", tmp_path / "missing.mp4", f / "loop_a.mp4", f / "notes.txt", f / "x/y"]
    assert _codes(scan_entries(named)) == {
        "/dev/null": "not_regular_file",
        f"{f}/fifo.log": "not_regular_file",
        f"{tmp_path}/missing.mp4": "not_found",
        f"{f}/loop_a.mp4": "symlink_loop",
        f"{f}/notes.txt": None,  # named: judged whatever its suffix (its media verdict comes from its bytes)
        f"{f}/x/y": "not_found",
    }


def test_a_folder_that_cannot_be_listed_is_an_unreadable_entry_and_the_walk_goes_on(tmp_path):
    # Given a folder this user cannot list, named between two good files
    (tmp_path / "a.mp4").write_bytes(b"a")
    locked = unlistable_folder(tmp_path)
    try:
        # When they are walked (the locked one inside a folder, or named, where it cannot be made here)
        entries = list(scan_entries([tmp_path] if locked.parent == tmp_path else [tmp_path, locked]))
    finally:
        if locked.parent == tmp_path:
            locked.chmod(0o700)
    # Then the folder is an unreadable entry, its insides are not guessed at, and the good file is there
    assert _codes(entries) == {f"{tmp_path}/a.mp4": None, str(locked): "unreadable"}
    assert "cannot list folder" in entries[-1].problem.detail


def test_scan_job_hashes_a_good_file_into_a_stable_id_and_never_opens_a_fifo(tmp_path):
    good = tmp_path / "clip.mp4"
    good.write_bytes(b"frames")
    job, problem = scan_job(ScanEntry(good))
    assert problem is None and job.known_sha256 and job.path == good.resolve()
    assert scan_job(ScanEntry(good))[0].job_id == job.job_id
    # Given a FIFO that the walk took for a file (it was swapped in after the walk)
    fifo = tmp_path / "swapped.mp4"
    os.mkfifo(fifo)
    # When its job is made, it is not blocked on (no writer will ever come) and not hashed
    job, problem = scan_job(ScanEntry(fifo))
    assert problem.code == "not_regular_file" and job.known_sha256 is None


def test_scan_job_reports_an_unreadable_file_instead_of_raising(tmp_path):
    path = unreadable_file(tmp_path, "locked.png")
    job, problem = scan_job(ScanEntry(path))
    assert problem.code == "unreadable" and "Permission denied" in problem.detail
    # the verdict names the path as given (a link keeps its own name) and has no content hash
    assert job.path == path and job.known_sha256 is None
    assert job.job_id == scan_job(ScanEntry(path))[0].job_id


def _error_from(action) -> OSError:
    try:
        action()
    except OSError as e:
        return e
    raise AssertionError("no OSError")


def test_path_problem_classifies_real_kernel_errors(tmp_path):
    loop, file = tmp_path / "loop.mp4", tmp_path / "file.mp4"
    os.symlink("loop.mp4", loop)
    file.write_bytes(b"x")
    mem = os.open("/proc/self/mem", os.O_RDONLY)
    errors = [
        (errno.ELOOP, _error_from(lambda: os.stat(loop)), "symlink_loop"),
        (errno.ENOENT, _error_from(lambda: os.stat(tmp_path / "missing.mp4")), "not_found"),
        (errno.ENOTDIR, _error_from(lambda: os.stat(file / "child")), "not_found"),
        (errno.EIO, _error_from(lambda: os.read(mem, 8)), "unreadable"),  # address 0 is not mapped
    ]
    os.close(mem)
    for number, error, code in errors:
        assert error.errno == number and path_problem(error, tmp_path / "p").code == code
    # EACCES and EPERM, as the kernel raises them for a user without the right (not makeable for root everywhere)
    for number in (errno.EACCES, errno.EPERM):
        assert path_problem(PermissionError(number, os.strerror(number)), file).code == "unreadable"


def test_a_walk_that_breaks_hands_out_what_it_listed_and_says_it_broke(tmp_path):
    # Given entries whose iteration itself fails after one (a bug in the walk, not one file)
    def entries():
        yield ScanEntry(tmp_path / "a.mp4")
        raise RuntimeError("walk bug")

    source = FilesSource(entries=entries())
    # Then the source hands out what was listed, then runs out, and says the scan did not finish
    assert [e.entry.path.name for e in source.take(8)] == ["a.mp4"]
    assert source.take(8) == [] and source.exhausted()
    assert "walk bug" in source.broken


def test_the_files_source_hands_out_paths_in_order_as_room_allows_and_pauses(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(name.encode())
    source = FilesSource([tmp_path])
    first = source.take(2)
    assert [(e.ticket.offset, e.entry.path.name) for e in first] == [(0, "a.mp4"), (1, "b.mp4")]
    source.pause()
    assert source.take(2) == [] and source.in_flight() == 2 and not source.exhausted()
    source.resume()
    assert [e.entry.path.name for e in source.take(2)] == ["c.mp4"] and source.exhausted()
