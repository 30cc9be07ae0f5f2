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
