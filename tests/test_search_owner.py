"""One owner per search: two ``tune`` processes started together on one run directory, or on
one search name in one results root, run one search; the other stops in one line naming the
owner. Locks on files and on a (local) S3 server, taken over when their owner is gone."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from fixtures.search import SMALL, TUNE, driver_env, journal_study, trial_runs, write_space

from mrnet_ray.errors import UserError
from mrnet_ray.search.lock import Owner, SearchLock
from mrnet_ray.search.settings import results_file

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def launch(tmp_path: Path, env: dict, runs: list[list[str]]) -> list[subprocess.Popen]:
    """One-trial, one-epoch searches of the tiny space, one per item of ``runs`` (its flags),
    started at once; each logs to ``tmp_path/tune<i>.log``."""
    space = write_space(tmp_path, "3.0e-3", epochs=1)
    procs = []
    for i, flags in enumerate(runs):
        argv = [*TUNE, "--data", env["DATA"], "--space", str(space), "--num-samples", "1",
                "--max-concurrent", "1", *SMALL, *flags]  # fmt: skip
        with (tmp_path / f"tune{i}.log").open("w") as log:
            procs.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log))
    return procs


def one_owner(tmp_path: Path, procs: list[subprocess.Popen]) -> tuple[int, str]:
    """(index of the process that ran, the other's one error line naming its pid and host)."""
    logs = [(tmp_path / f"tune{i}.log").read_text() for i in range(len(procs))]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [log[-2000:] for log in logs]
    owner = next(i for i, p in enumerate(procs) if p.returncode == 0)
    loser = logs[1 - owner].strip().splitlines()
    errors = [line for line in loser if line.startswith("error: ")]
    assert len(errors) == 1 and loser[-1] == errors[0], loser[-20:]
    assert f"pid {procs[owner].pid} on host {HOST} " in errors[0], errors[0]
    assert "Traceback" not in logs[1 - owner]
    return owner, errors[0]


def check_finished(run_dir: Path) -> None:
    """The owner's search ran to its end: its study, its MLflow runs, its record intact."""
    record = json.loads((run_dir / "search.json").read_text())
    assert record["status"] == "FINISHED" and record["trials"]["completed"] == 1
    study = journal_study(record)  # not deleted by the other start
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    runs = trial_runs(run_dir)  # not closed by the other start
    assert [r.status for r in runs] == ["FINISHED"]
    assert not list(run_dir.glob(".search.json.tmp-*"))
    assert not (run_dir / "search.lock").exists()  # released at the end


@pytest.mark.slow
def test_two_starts_together_run_one_search(tiny_prepared, ray_session, tmp_path):
    """The same command twice (one run directory), and two run directories with one --name
    and one --storage (one Tune experiment, one MLflow search run): four starts at once."""
    env = {**driver_env(ray_session), "DATA": str(tiny_prepared)}
    same_dir, same_name = tmp_path / "same-dir", tmp_path / "same-name"
    same_dir.mkdir()
    same_name.mkdir()
    storage = same_name / "results"
    name_flags = ["--name", "shared", "--storage", str(storage)]
    starts = {
        "dir": launch(same_dir, env, [["--run-dir", str(same_dir / "run")]] * 2),
        "name": launch(
            same_name, env, [["--run-dir", str(same_name / f"run{i}"), *name_flags] for i in (0, 1)]
        ),
    }
    for proc in [*starts["dir"], *starts["name"]]:
        proc.wait(timeout=600)

    _, line = one_owner(same_dir, starts["dir"])
    assert f"holds {same_dir / 'run' / 'search.lock'};" in line
    check_finished(same_dir / "run")

    owner, line = one_owner(same_name, starts["name"])
    assert f"holds {results_file(str(storage / 'shared'), 'search.lock')};" in line
    check_finished(same_name / f"run{owner}")
    assert not (same_name / f"run{1 - owner}" / "search.json").exists()  # it wrote nothing


def test_a_lock_of_a_dead_process_is_taken_over_and_a_live_one_refused(tmp_path):
    path = str(tmp_path / "search.lock")  # as a killed driver of this host leaves it
    Path(path).write_text(
        json.dumps({"pid": dead_pid(), "host": HOST, "since": "then", "token": "t"})
    )
    mine = SearchLock(path, "demo", heartbeat_s=0.2)
    note = mine.acquire()
    assert re.fullmatch(
        rf"took over the lock {path} of search demo: its owner, pid \d+ on host {HOST} "
        r"\(since then\), is no longer running",
        note,
    )
    held, deadline = Path(path).read_bytes(), time.monotonic() + 10
    while Path(path).read_bytes() == held:  # the owner renews it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(UserError) as info:
        SearchLock(path, "demo").acquire()
    assert str(info.value) == (
        f"search demo is already running: pid {mine.owner.pid} on host {HOST} "
        f"(since {mine.owner.since}) holds {path}; wait for it to end, or stop it"
    )
    mine.release()
    assert not Path(path).exists()


def foreign(renewed: str = "1") -> bytes:
    """A lock as a driver on another host writes it."""
    owner = {"pid": 4242, "host": "elsewhere", "since": "then", "token": "t", "renewed": renewed}
    return json.dumps(owner).encode()


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_lock_of_another_host_is_taken_over_only_when_nobody_renews_it(where, tmp_path, s3_uri):
    """Another host's pid cannot be asked: its lock is watched. Renewed (its owner runs):
    refused. Not renewed for ``stale_s`` (its head died): taken over, and said."""
    from mrnet_ray import storage

    location = str(tmp_path / "search.lock") if where == "file" else s3_uri("locks", "h/lock")
    shown = location.partition("?")[0]
    storage.write_bytes(location, foreign())
    stop = threading.Event()

    def renew() -> None:  # the other host's driver, alive: it rewrites its lock in place
        beat = 1
        while not stop.wait(0.2):
            beat += 1
            if where == "s3":
                storage.write_bytes(location, foreign(str(beat)))
            else:
                with open(location, "r+b") as f:
                    f.write(foreign(str(beat)))

    renewer = threading.Thread(target=renew)
    renewer.start()
    said: list[str] = []
    try:
        with pytest.raises(UserError) as info:
            SearchLock(location, "demo", stale_s=3, say=said.append).acquire()
    finally:
        stop.set()
        renewer.join()
    assert str(info.value) == (
        f"search demo is already running: pid 4242 on host elsewhere (since then) holds "
        f"{shown}; wait for it to end, or stop it"
    )
    assert said == [
        f"search demo: the lock {shown} names pid 4242 on host elsewhere (since then), which "
        "this host cannot ask; waiting up to 3 s for it to be renewed"
    ]

    taker = SearchLock(location, "demo", stale_s=1, say=said.append)
    assert taker.acquire() == (
        f"took over the lock {shown} of search demo: its owner, pid 4242 on host elsewhere "
        "(since then), has not renewed it for 1 s"
    )
    assert Owner.parse(storage.read_bytes(location)) == taker.owner
    taker.release()
    assert storage.read_bytes(location) is None


@pytest.mark.slow
def test_an_object_store_lock_has_one_owner(s3_uri):
    """Two processes' starts at once on one ``s3://`` lock (threads with their own tokens):
    exactly one holds it; after its release a stale lock of this host is taken over."""
    location = s3_uri("locks", "demo/mrnet_ray/search.lock")
    locks = [SearchLock(location, "demo") for _ in range(2)]
    outcome: dict[int, str] = {}

    def take(i: int) -> None:
        try:
            locks[i].acquire()
            outcome[i] = "owner"
        except UserError as e:
            outcome[i] = str(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(outcome.values()).count("owner") == 1, outcome
    owner = next(i for i, v in outcome.items() if v == "owner")
    assert f"pid {locks[owner].owner.pid} on host {HOST}" in outcome[1 - owner]
    locks[owner].release()

    from mrnet_ray import storage

    assert storage.read_bytes(location) is None
    dead = {"pid": dead_pid(), "host": HOST, "since": "then", "token": "t"}
    storage.write_bytes(location, json.dumps(dead).encode())
    again = SearchLock(location, "demo")
    assert "is no longer running" in again.acquire()
    again.release()
