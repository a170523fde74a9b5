import random

import pytest

from sphincter_lib.proto import roomcode
from sphincter_lib.errors import RoomNotFound


def test_alphabet_has_no_look_alikes():
    assert len(roomcode.ALPHABET) == 31
    for c in "0O1IL":
        assert c not in roomcode.ALPHABET
    assert set(roomcode.ALPHABET) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def test_codes_are_six_allowed_characters():
    for _ in range(500):
        code = roomcode.make_code()
        assert len(code) == 6
        assert set(code) <= set(roomcode.ALPHABET)


def test_code_never_equals_a_live_one():
    rng = random.Random(1)
    first = roomcode.make_code(choice=random.Random(1).choice)
    # the same RNG stream would repeat `first`; it must be skipped because it is taken
    second = roomcode.make_code(taken={first}, choice=rng.choice)
    assert second != first


def test_exhausted_draws_raise():
    with pytest.raises(RuntimeError):
        roomcode.make_code(taken={"AAAAAA"}, choice=lambda alphabet: "A", attempts=3)


@pytest.mark.parametrize("typed,expected", [("x7k9p2", "X7K9P2"), (" X7K9P2 ", "X7K9P2")])
def test_normalize_is_case_insensitive(typed, expected):
    assert roomcode.normalize(typed) == expected


@pytest.mark.parametrize("bad", ["", None, "X7K9P", "X7K9P22", "O7K9P2", "X7K9P!", "X7 9P2"])
def test_normalize_rejects(bad):
    with pytest.raises(RoomNotFound):
        roomcode.normalize(bad)
    assert not roomcode.is_valid(bad)
