"""A member down for many slots comes back by snapshot (scaled down; see tests.faults.catchup
for the full-size run)."""

from tests.faults.catchup import run_catchup


def test_a_follower_down_past_the_leaders_log_catches_up_by_snapshot_and_agrees(tmp_path):
    report = run_catchup(tmp_path, slots=1500, snapshot_every=200, sessions=16, keys=300,
                         value_size=64)
    assert report.ok, report.summary()
    assert report.leader_log_start > report.follower_commit_before + 1
    assert report.snapshot_bytes > 300 * 64, report.summary()


def test_a_follower_whose_data_was_wiped_rejoins_under_a_new_incarnation_and_agrees(tmp_path):
    report = run_catchup(tmp_path, slots=600, snapshot_every=200, sessions=16, keys=200,
                         wipe=True)
    assert report.ok, report.summary()
    assert report.incarnation_after != 0
