"""The recording schedule on its own, without a Trainer."""

from lightning_embeddings.schedule import Schedule


def test_every_n_counts_validated_epochs_and_keeps_the_last():
    schedule = Schedule(every_n_epochs=2)
    # check_val_every_n_epoch=2, max_epochs=5: validations after epochs 1 and 3; the first is due, 3 is the last
    assert [schedule.due(epoch, 5, 2) for epoch in (1, 3)] == [True, True]
    schedule = Schedule(every_n_epochs=3)
    assert [schedule.due(epoch, 7, 1) for epoch in range(7)] == [True, False, False, True, False, False, True]


def test_several_validations_in_one_epoch_share_its_decision():
    schedule = Schedule(every_n_epochs=2)
    assert [schedule.due(epoch, None, 1) for epoch in (0, 0, 1, 1, 2)] == [True, True, False, False, True]
    assert schedule.validations == 3


def test_no_max_epochs_has_no_last_validation():
    schedule = Schedule(every_n_epochs=4)
    assert [schedule.due(epoch, -1, 1) for epoch in range(6)] == [True, False, False, False, True, False]


def test_the_count_survives_a_resume():
    first = Schedule(every_n_epochs=2)
    for epoch in range(3):
        first.due(epoch, 10, 1)
    resumed = Schedule(every_n_epochs=2)
    resumed.load_state_dict(first.state_dict())
    assert resumed.due(2, 10, 1) is True  # epoch 2 again (a mid-epoch resume): same validation, same decision
    assert [resumed.due(epoch, 10, 1) for epoch in (3, 4)] == [False, True]
