"""googlenet.train.guard: failed writes as one line that says what to do."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from googlenet.errors import RunError, UserError
from googlenet.train import guard


def _mkdir_error(path) -> OSError:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e
    raise AssertionError(f"{path} could be created")


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path):
    a_file = tmp_path / "photo.png"
    a_file.write_bytes(b"x")
    for run_dir in (a_file, a_file / "run", a_file / "deeper" / "run"):  # the file itself, or inside it
        failed = guard.write_error(_mkdir_error(run_dir), run_dir)
        assert type(failed) is UserError, failed
        message = str(failed)
        assert f"cannot create the run folder {run_dir} ({a_file} is a file)" in message
        assert "pick another --out" in message
        assert "--resume" not in message and "\n" not in message  # nothing was started: nothing to resume


def test_an_unwritable_place_for_the_run_folder_is_a_run_error(tmp_path):
    run_dir = tmp_path / "ro" / "run"
    error = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "ro"))
    failed = guard.write_error(error, run_dir)
    assert type(failed) is RunError and "Permission denied" in str(failed) and "pick another --out" in str(failed)


def test_a_failed_checkpoint_write_keeps_the_resume_advice(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / ".last.pt.abc123.tmp"))
    failed = guard.write_error(error, run_dir)
    assert isinstance(failed, RunError) and "cannot write last.pt" in str(failed)
    assert f"--resume {run_dir}" in str(failed)


def test_errors_elsewhere_are_not_claimed(tmp_path):
    assert guard.write_error(OSError(errno.ENOENT, "gone", "/somewhere/else"), tmp_path / "run") is None
    assert guard.write_error(ValueError("a bug"), tmp_path / "run") is None


def test_run_in_use_names_the_pid_holding_the_run_lock_and_leaves_the_lock_alone(tmp_path):
    run = tmp_path / "run"
    assert guard.run_in_use(run) is None and not run.exists()  # a probe creates nothing
    with guard.RunLock(run):
        assert guard.run_in_use(run) == str(os.getpid())
        assert guard.run_in_use(run) == str(os.getpid())  # the probe took no lock of its own
        with pytest.raises(UserError, match=f"in use by another googlenet train \\(pid {os.getpid()}\\)"):
            guard.RunLock(run).__enter__()  # the holder keeps its lock through the probes
    assert (run / ".lock").is_file() and guard.run_in_use(run) is None  # a lock file alone is no live run


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_requested_stop_is_not_labelled_an_error(signal_name, capsys, monkeypatch):
    import signal

    from googlenet import cli

    stop = guard.StopRequested(f"stopped by {signal_name} at step 3; continue with: googlenet train --resume r",
                               getattr(signal, signal_name))
    monkeypatch.setattr("googlenet.commands.train.run", lambda args: (_ for _ in ()).throw(stop))
    code = cli.main(["train"])
    err = capsys.readouterr().err.strip()
    assert code == 128 + getattr(signal, signal_name)
    assert err == f"googlenet train: stopped by {signal_name} at step 3; continue with: googlenet train --resume r"


@pytest.mark.parametrize("under_torchrun", [False, True])
def test_a_second_stop_signal_stops_at_once_unless_it_is_the_same_one_repeated_under_torchrun(
        under_torchrun, monkeypatch, capsys):
    """A scheduler's SIGTERM can reach a torchrun worker directly and again through torchrun:
    one request (a checkpoint is still written). Another signal, or a repeat later, or any
    repeat in a process of its own, is the user insisting: stop at once."""
    import signal

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if under_torchrun:
            monkeypatch.setenv(key, "1" if key == "WORLD_SIZE" else "0")
        else:
            monkeypatch.delenv(key, raising=False)
    with guard.StopSignals() as stops:
        stops._handle(signal.SIGTERM, None)
        assert stops.received == signal.SIGTERM
        if under_torchrun:
            stops._handle(signal.SIGTERM, None)  # moments later: the same request
            with pytest.raises(KeyboardInterrupt):
                stops._handle(signal.SIGINT, None)
        else:
            with pytest.raises(KeyboardInterrupt):
                stops._handle(signal.SIGTERM, None)
    with guard.StopSignals() as stops:  # a repeat after the grace period is a second request
        stops._handle(signal.SIGTERM, None)
        monkeypatch.setattr(guard.time, "monotonic", lambda: 1e12)
        with pytest.raises(KeyboardInterrupt):
            stops._handle(signal.SIGTERM, None)
    assert capsys.readouterr().err.count("SIGTERM received") == 2  # rank 0 says it, once per request


def test_the_stop_line_names_what_it_waits_for_and_a_second_signal_says_what_is_lost(tmp_path, monkeypatch,
                                                                                     capsys):
    import signal

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with guard.StopSignals(tmp_path) as stops:
        stops.phase = "test (5000 images)"  # set by the loop while a test pass runs
        stops._handle(signal.SIGINT, None)
        assert "SIGINT received: stopping after the current test (5000 images) and saving" in capsys.readouterr().err
        with pytest.raises(guard.StoppedAtOnce, match="second SIGINT, before the first checkpoint: nothing was "
                                                       "saved; start the run again"):
            stops._handle(signal.SIGINT, None)
    (tmp_path / "last.pt").write_bytes(b"")
    with guard.StopSignals(tmp_path) as stops:
        stops._handle(signal.SIGTERM, None)
        with pytest.raises(KeyboardInterrupt, match=f"the work since the last checkpoint is lost; continue from "
                                                    f".*last.pt with: googlenet train --resume {tmp_path}"):
            stops._handle(signal.SIGINT, None)


def test_a_second_signal_is_one_line_from_the_cli(monkeypatch, capsys):
    from googlenet import cli

    lost = guard.StoppedAtOnce("stopped at once by a second SIGINT: the work since the last checkpoint is lost")
    monkeypatch.setattr("googlenet.commands.train.run", lambda args: (_ for _ in ()).throw(lost))
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err.strip() == f"googlenet train: {lost}"


def test_a_terminal_closing_hangs_up_twice_which_is_one_request(tmp_path, monkeypatch, capsys):
    """bash passes its SIGHUP on to the foreground job, then the kernel sends one as bash exits."""
    import signal

    monkeypatch.setattr(guard, "detach_from_terminal", lambda: None)  # pytest's own terminal stays
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with guard.StopSignals(tmp_path) as stops:
        stops._handle(signal.SIGHUP, None)
        stops._handle(signal.SIGHUP, None)  # no StoppedAtOnce: the checkpoint is still written
        assert stops.received == signal.SIGHUP
        with pytest.raises(guard.StoppedAtOnce):  # the user insisting is still "at once"
            stops._handle(signal.SIGINT, None)
    with guard.StopSignals(tmp_path) as stops:
        stops._handle(signal.SIGINT, None)
        stops._handle(signal.SIGHUP, None)  # Ctrl-C, then the window closed: still one request
        assert stops.received == signal.SIGINT
    assert capsys.readouterr().err.count("received: stopping") == 2


def test_a_forked_loader_worker_leaves_stopping_to_the_main_process(monkeypatch):
    import signal

    with guard.StopSignals() as stops:
        monkeypatch.setattr(guard.os, "getpid", lambda: stops._pid + 1)  # as in a forked DataLoader worker
        stops._handle(signal.SIGINT, None)
        stops._handle(signal.SIGINT, None)  # no KeyboardInterrupt in the worker either
        assert stops.received is None


def test_nested_entries_restore_the_callers_handlers_and_streams_once():
    import signal
    import sys

    before = (signal.getsignal(signal.SIGINT), sys.stdout, sys.stderr)
    with guard.StopSignals() as stops:
        inside = (signal.getsignal(signal.SIGINT), sys.stdout, sys.stderr)
        with stops:
            pass
        assert (signal.getsignal(signal.SIGINT), sys.stdout, sys.stderr) == inside  # still ours
    assert (signal.getsignal(signal.SIGINT), sys.stdout, sys.stderr) == before


def test_stop_votes_sum_over_processes_and_name_the_signal():
    import signal

    votes = []
    for got in (None, signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        voter = guard.StopSignals()
        voter.received = got
        votes.append(voter.vote())
    assert votes[0] == 0 and sum(votes) > 0
    quiet = guard.StopSignals()
    quiet.join(sum(votes))
    assert quiet.received == signal.SIGINT  # any Ctrl-C among them
    quiet = guard.StopSignals()
    quiet.join(votes[1] + votes[3])
    assert quiet.received == signal.SIGTERM
    asked = guard.StopSignals()
    asked.received = signal.SIGTERM
    asked.join(sum(votes))
    assert asked.received == signal.SIGTERM  # its own signal stands


def test_output_that_goes_away_asks_for_a_stop_instead_of_failing_the_write(tmp_path, monkeypatch):
    """The reader of a pipe the run writes to ends (`googlenet train | tee log`, tee killed): the
    write that fails (EPIPE) is swallowed, later writes go to /dev/null, and the run is asked to
    stop (reported as SIGPIPE); a signal after that is still a first request, not "stop at once"."""
    import signal

    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    stops = guard.StopSignals(tmp_path)
    watched = guard._OutputWatch(stream, stops._output_lost)
    watched.write("epoch 1\n")
    watched.flush()
    assert os.read(read_end, 100) == b"epoch 1\n" and stops.received is None
    os.close(read_end)
    watched.write("epoch 2\n")
    watched.flush()  # EPIPE here, swallowed
    assert stops.received == signal.SIGPIPE
    assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    watched.write("epoch 3\n")
    watched.flush()
    assert stops.vote() == guard.STOP_VOTE_SIGTERM
    monkeypatch.setattr(guard, "detach_from_terminal", lambda: None)  # pytest's own terminal stays
    stops._handle(signal.SIGHUP, None)  # the terminal's hangup arriving just after: not a second request
    assert stops.received == signal.SIGHUP
    assert str(stops.stopped(7)).startswith("stopped by SIGHUP at step 7")
    stops.received = signal.SIGPIPE
    assert "output went away" in str(stops.stopped(7))
    stream.close()

    other = guard._OutputWatch(open(tmp_path / "f", "w"), stops._output_lost)
    other.close()
    with pytest.raises(ValueError):  # other failures are not claimed
        other.write("x")


def test_late_read_hands_back_a_copy_of_what_was_put_with_its_tag_once():
    late = guard.LateRead()
    assert late.take() is None
    flags = torch.tensor([2.5, 0.0])
    late.put(flags, (7, 1))
    flags.fill_(float("nan"))  # the step's tensor may be reused; the read keeps what was put
    assert late.take() == ([2.5, 0.0], (7, 1))
    assert late.take() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_late_read_of_a_gpu_tensor_returns_its_values_after_the_async_copy():
    late = guard.LateRead()
    late.put(torch.tensor([1.0, 3.0], device="cuda"), "step")
    assert late.take() == ([1.0, 3.0], "step")


def test_best_checkpoint_is_a_link_that_later_saves_of_last_leave_alone(tmp_path, monkeypatch):
    from googlenet.train import checkpoint as ckpt

    def payload(step):
        return {"model": {}, "config": {}, "step": step}

    ckpt.save_checkpoint(tmp_path / ckpt.LAST, payload(1))
    assert ckpt.save_best(tmp_path, payload(1)) == tmp_path / ckpt.BEST
    assert (tmp_path / ckpt.BEST).stat().st_ino == (tmp_path / ckpt.LAST).stat().st_ino  # no second write
    ckpt.save_checkpoint(tmp_path / ckpt.LAST, payload(2))  # replaced by a rename: best.pt keeps step 1
    assert ckpt.load_checkpoint(tmp_path / ckpt.BEST)["step"] == 1
    assert ckpt.load_checkpoint(tmp_path / ckpt.LAST)["step"] == 2
    ckpt.save_best(tmp_path, payload(2))
    ckpt.save_best(tmp_path, payload(2))  # already a link to last.pt: the rename does nothing, no temp file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.BEST, ckpt.LAST]

    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)  # e.g. some network file systems: a copy is written
    ckpt.save_best(tmp_path, payload(2))
    assert ckpt.load_checkpoint(tmp_path / ckpt.BEST)["step"] == 2
    assert (tmp_path / ckpt.BEST).stat().st_ino != (tmp_path / ckpt.LAST).stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.BEST, ckpt.LAST]  # no temporary files left
