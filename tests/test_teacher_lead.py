"""The teacher's lead over the undistilled student, and the advice the pipeline gives when it is small."""

from nfdseg.app.choose import SMALL_TEACHER_LEAD, teacher_lead


def test_a_small_lead_says_there_is_little_to_distil_and_what_to_do():
    lead = teacher_lead(48.48, 47.65)  # the camvid_cpu preset before issue 25: NFD lost 1.8 points
    assert lead.small and lead.lead == 0.83
    for words in ("only +0.83 mIoU points", "little to transfer", "teacher.train.iters", "pretrained"):
        assert words in lead.message, words


def test_a_clear_lead_is_reported_without_alarm():
    lead = teacher_lead(54.40, 47.65)
    assert not lead.small and lead.lead == 6.75
    assert "enough to distil" in lead.message and "little" not in lead.message


def test_the_threshold_is_the_one_constant_and_a_negative_lead_is_small():
    assert teacher_lead(50.0 + SMALL_TEACHER_LEAD, 50.0).small is False
    assert teacher_lead(50.0 + SMALL_TEACHER_LEAD - 0.01, 50.0).small is True
    assert teacher_lead(40.0, 45.0).small and "-5.00" in teacher_lead(40.0, 45.0).message
