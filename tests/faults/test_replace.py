"""Membership change on real processes (scaled down; see tests.faults.replace for longer runs)."""

from tests.faults.replace import run_replace


def test_replacing_a_member_under_load_loses_no_acknowledged_write(tmp_path):
    report = run_replace(tmp_path, settle=1.0, writers=8, snapshot_every=300)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.acknowledged > 0
