"""Voucher codes and the guessing throttle, without I/O."""

from __future__ import annotations

import pytest

from billing_manager.domain.vouchers import (
    ALPHABET,
    GuessThrottle,
    code_hash,
    new_code,
    normalize,
)
from meterline.kernel.config import ConfigError, Settings, load_settings, voucher_secret
from meterline.kernel.errors import InvalidArgument, ResourceExhausted


def test_codes_are_four_groups_of_four_from_an_alphabet_without_look_alikes() -> None:
    codes = {new_code() for _ in range(1000)}
    assert len(codes) == 1000
    for code in codes:
        groups = code.split("-")
        assert [len(group) for group in groups] == [4, 4, 4, 4]
        assert set("".join(groups)) <= set(ALPHABET)
    assert not set("01ILO") & set(ALPHABET)


def test_a_code_is_the_same_however_it_is_typed() -> None:
    code = new_code()
    secret = "s" * 40
    typed = f"  {code.lower().replace('-', ' ')} "
    assert normalize(typed) == code.replace("-", "")
    assert code_hash(secret, typed) == code_hash(secret, code)
    assert code_hash("t" * 40, code) != code_hash(secret, code)


@pytest.mark.parametrize("text", ["", "ABCD", "2345-6789-ABCD-EFG0", "2345-6789-ABCD-EFGHJ"])
def test_what_cannot_be_a_code_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize(text)


def test_the_throttle_refuses_after_five_refusals_in_a_minute_then_forgives() -> None:
    throttle = GuessThrottle(limit=5, window=60)
    for second in range(5):
        throttle.check("a", float(second))
        throttle.refused("a", float(second))
    with pytest.raises(ResourceExhausted, match="try again in 56 seconds") as raised:
        throttle.check("a", 4.0)
    assert raised.value.reason == "VOUCHER_ATTEMPTS_EXHAUSTED"
    throttle.check("b", 4.0)  # another caller is not held back
    throttle.check("a", 60.5)  # the first refusal is a minute old
    throttle.refused("a", 60.5)
    with pytest.raises(ResourceExhausted):
        throttle.check("a", 60.5)


def test_the_voucher_secret_is_configured_or_derived_from_the_token_secret() -> None:
    token = "t" * 40
    derived = voucher_secret(Settings(token_secret=token))
    assert derived == voucher_secret(Settings(token_secret=token))  # every instance agrees
    assert derived != token and len(derived) >= 32
    assert derived != voucher_secret(Settings(token_secret="u" * 40))
    assert voucher_secret(Settings(token_secret=token, voucher_secret="v" * 40)) == "v" * 40
    with pytest.raises(ConfigError, match="METERLINE_VOUCHER_SECRET"):
        voucher_secret(Settings(token_secret=token, voucher_secret="short"))
    assert load_settings({"METERLINE_VOUCHER_SECRET": "w" * 40}).voucher_secret == "w" * 40
