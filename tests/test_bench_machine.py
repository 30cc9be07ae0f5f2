"""bench/machine.py: the load window decides whether a ratio measured across it may be printed as met."""

from phinetune.bench import machine as m


def test_steady_only_when_load_held(monkeypatch):
    loads = iter([(1.0, 1.0, 1.0), (1.5, 1.2, 1.0), (1.0, 1.0, 1.0), (2.0, 1.5, 1.0)])
    monkeypatch.setattr(m, "load_average", lambda: next(loads))
    held = m.LoadWindow()
    assert not held.steady  # not closed yet: nothing can be claimed
    assert held.close().steady and "at end 1.50" in held.describe()
    moved = m.LoadWindow().close()
    assert not moved.steady and moved.to_json()["steady"] is False


def test_machine_names_cpu_and_threads():
    info = m.machine()
    assert info["cores"] >= 1 and info["torch_threads"] >= 1 and info["cpu"]


def test_others_share_subtracts_our_own_cpu(monkeypatch):
    busy, own, clock = iter([100.0, 103.0]), iter([10.0, 11.0]), iter([50.0, 52.0])
    monkeypatch.setattr(m, "busy_seconds", lambda: next(busy))
    monkeypatch.setattr(m, "own_seconds", lambda: next(own))
    monkeypatch.setattr(m, "clock", lambda: next(clock))
    share = m.OthersShare().close()
    assert share.cores == 1.0  # 3 busy CPU seconds in 2 s, 1 of them ours: others kept one core busy


def test_others_share_unknown_without_proc_stat(monkeypatch):
    monkeypatch.setattr(m, "busy_seconds", lambda: None)
    assert m.OthersShare().close().cores is None


def test_busy_seconds_reads_proc_stat():
    value = m.busy_seconds()
    assert value is None or value > 0
