"""rating_service.domain.tariffs and tariff_files: validation, longest-prefix match and
all-or-nothing tariff sheets (CSV and YAML files written to tmp_path)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterline.kernel.errors import InvalidArgument, NotFound
from meterline.kernel.media import MAX_ENDPOINT_LENGTH, ServiceType, Unit, validate_endpoint
from meterline.kernel.pricing import RateTerms, price_units
from rating_service.domain.tariff_files import TariffFileError, read_tariff_file
from rating_service.domain.tariffs import (
    MAX_PREFIX_LENGTH,
    MAX_PRICE_MICROS,
    MAX_UNITS,
    Tariff,
    TariffIndex,
    validate_tariff,
)

pytestmark = pytest.mark.unit

TERMS = RateTerms(price_per_unit_micros=100, increment_units=1, minimum_units=0, setup_fee_micros=0)


def tariff(
    prefix: str, service_type: ServiceType = ServiceType.VOICE, tariff_id: str = ""
) -> Tariff:
    return Tariff(
        tariff_id=tariff_id or f"{service_type.value}:{prefix or 'fallback'}",
        service_type=service_type,
        prefix=prefix,
        unit=Unit.SECOND,
        terms=TERMS,
        currency="EUR",
    )


VOICE_INDEX = TariffIndex([tariff(""), tariff("+44"), tariff("+4420")])


# -- matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "prefix"),
    [
        ("+442079460000", "+4420"),
        ("+4420", "+4420"),
        ("+441612345678", "+44"),
        ("+44", "+44"),
        ("+442", "+44"),
        ("+4", ""),
        ("+15551234567", ""),
        ("sip:alice@example.com", ""),
    ],
)
def test_the_longest_matching_prefix_wins(endpoint: str, prefix: str) -> None:
    assert VOICE_INDEX.match(ServiceType.VOICE, endpoint).prefix == prefix


def test_service_types_do_not_share_tariffs() -> None:
    index = TariffIndex([tariff(""), tariff("+44", ServiceType.VIDEO)])
    assert index.match(ServiceType.VOICE, "+441612345678").tariff_id == "VOICE:fallback"
    assert index.match(ServiceType.VIDEO, "+441612345678").tariff_id == "VIDEO:+44"
    with pytest.raises(NotFound):
        index.match(ServiceType.VIDEO, "+15551234567")
    with pytest.raises(NotFound):
        index.match(ServiceType.INSTANT_MESSAGING, "+441612345678")


@pytest.mark.parametrize(
    ("index", "service_type", "endpoint"),
    [
        (TariffIndex(), ServiceType.VOICE, "+44"),
        (TariffIndex([tariff("+44")]), ServiceType.VOICE, "+15551234567"),
        (TariffIndex([tariff("+4420")]), ServiceType.VOICE, "+44"),
        (VOICE_INDEX, ServiceType.APPLICATION, "app"),
    ],
)
def test_no_match_is_an_unknown_endpoint(
    index: TariffIndex, service_type: ServiceType, endpoint: str
) -> None:
    with pytest.raises(NotFound) as caught:
        index.match(service_type, endpoint)
    assert caught.value.reason == "UNKNOWN_ENDPOINT"
    assert repr(endpoint) in caught.value.message
    assert service_type.value in caught.value.message


def test_the_index_counts_every_tariff() -> None:
    assert len(TariffIndex()) == 0
    assert len(VOICE_INDEX) == 3
    assert len(TariffIndex([tariff(""), tariff("", ServiceType.VIDEO), tariff("+1")])) == 3


def test_each_version_rates_the_usage_that_starts_in_it() -> None:
    change = datetime(2030, 1, 1, tzinfo=UTC)
    old = replace(tariff("+44", tariff_id="old"), effective_to=change)
    new = replace(tariff("+44", tariff_id="new"), effective_from=change)
    index = TariffIndex([new, old])
    assert len(index) == 2
    moment = int(change.timestamp())
    assert index.match(ServiceType.VOICE, "+4420", at=moment - 1).tariff_id == "old"
    assert index.match(ServiceType.VOICE, "+4420", at=moment).tariff_id == "new"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("", "endpoint is empty"),
        ("   ", "endpoint is empty"),
        ("\t", "endpoint is empty"),
        ("x" * (MAX_ENDPOINT_LENGTH + 1), f"longer than {MAX_ENDPOINT_LENGTH}"),
        ("+44 20", "spaces or control"),
        ("+4420\t", "spaces or control"),
        ("+44\x00", "spaces or control"),
        ("+44\n", "spaces or control"),
    ],
)
def test_bad_endpoints_are_refused_before_matching(endpoint: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_endpoint(endpoint)
    with pytest.raises(InvalidArgument, match=message):
        TariffIndex().match(ServiceType.VOICE, endpoint)


@pytest.mark.parametrize("endpoint", ["x" * MAX_ENDPOINT_LENGTH, "+4420", "sip:bob@host"])
def test_good_endpoints_pass(endpoint: str) -> None:
    assert validate_endpoint(endpoint) == endpoint
    assert VOICE_INDEX.match(ServiceType.VOICE, endpoint).service_type is ServiceType.VOICE


@pytest.mark.parametrize("units", [0, 1, 61, MAX_UNITS])
def test_rate_prices_under_the_matched_tariff(units: int) -> None:
    rated = VOICE_INDEX.rate(ServiceType.VOICE, "+442079460000", units)
    assert rated.tariff.prefix == "+4420"
    expected = price_units(TERMS, units)
    assert (rated.price.amount_micros, rated.price.billed_units) == (
        expected.amount_micros,
        expected.billed_units,
    )


@pytest.mark.parametrize(
    ("units", "message"), [(-1, "cannot be negative"), (MAX_UNITS + 1, "cannot exceed")]
)
def test_rate_refuses_bad_units(units: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        VOICE_INDEX.rate(ServiceType.VOICE, "+442079460000", units)


# -- validation -----------------------------------------------------------------------------


def _with_terms(**changes: int) -> Tariff:
    return replace(tariff("+44"), terms=replace(TERMS, **changes))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (tariff("x" * (MAX_PREFIX_LENGTH + 1)), f"longer than {MAX_PREFIX_LENGTH}"),
        (tariff("+44 20"), "spaces or control"),
        (tariff("+44\t"), "spaces or control"),
        (_with_terms(price_per_unit_micros=-1), "price_per_unit_micros cannot be negative"),
        (_with_terms(increment_units=0), "increment_units must be at least 1"),
        (_with_terms(minimum_units=-1), "minimum_units cannot be negative"),
        (_with_terms(setup_fee_micros=-1), "setup_fee_micros cannot be negative"),
        (_with_terms(price_per_unit_micros=MAX_PRICE_MICROS + 1), "more than a tariff price"),
        (_with_terms(setup_fee_micros=MAX_PRICE_MICROS + 1), "more than a tariff price"),
        (replace(tariff("+44"), currency="eur"), "not a currency code"),
        (replace(tariff("+44"), currency="EURO"), "not a currency code"),
    ],
)
def test_validate_tariff_names_the_bad_field(bad: Tariff, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_tariff(bad)


@pytest.mark.parametrize(
    "good",
    [
        tariff(""),
        tariff("x" * MAX_PREFIX_LENGTH),
        _with_terms(price_per_unit_micros=0),
        _with_terms(price_per_unit_micros=MAX_PRICE_MICROS, setup_fee_micros=MAX_PRICE_MICROS),
        _with_terms(increment_units=60, minimum_units=30),
    ],
)
def test_validate_tariff_returns_a_good_tariff(good: Tariff) -> None:
    assert validate_tariff(good) is good


# -- tariff sheets --------------------------------------------------------------------------

HEADER = (
    "service_type,prefix,unit,price_per_unit,increment_units,minimum_units,setup_fee,"
    "currency,description"
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(TariffFileError) as caught:
        read_tariff_file(path)
    error = caught.value
    assert isinstance(error, InvalidArgument)
    assert f"{len(error.problems)} error(s), nothing imported" in error.message
    return error.problems


def test_a_csv_sheet_is_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.csv",
        f"{HEADER}\n"
        "VOICE,+44,SECOND,0.01,60,30,0.05,EUR,UK calls\n"
        "voice, +4420 ,second,0.02,,,,eur,\n"
        "WEB_BROWSING,,BYTE,0.000001,1000,,,EUR,\n",
    )
    uk, london, web = read_tariff_file(path)

    assert uk == Tariff(
        tariff_id="",
        service_type=ServiceType.VOICE,
        prefix="+44",
        unit=Unit.SECOND,
        terms=RateTerms(
            price_per_unit_micros=10_000,
            increment_units=60,
            minimum_units=30,
            setup_fee_micros=50_000,
        ),
        currency="EUR",
        description="UK calls",
    )
    # Case is forgiven, blanks take the defaults, the prefix is trimmed.
    assert london.prefix == "+4420"
    assert london.unit is Unit.SECOND
    assert london.currency == "EUR"
    assert london.terms == RateTerms(20_000, 1, 0, 0)
    assert (web.service_type, web.prefix, web.unit) == (ServiceType.WEB_BROWSING, "", Unit.BYTE)
    assert web.terms.price_per_unit_micros == 1


def test_a_csv_sheet_needs_only_the_required_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "t.csv", "service_type,unit,price_per_unit,currency\nVOICE,SECOND,1,EUR\n"
    )
    (only,) = read_tariff_file(path)
    assert only.prefix == ""
    assert only.terms == RateTerms(1_000_000, 1, 0, 0)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_a_yaml_sheet_is_read(tmp_path: Path, suffix: str) -> None:
    path = _write(
        tmp_path,
        f"tariffs{suffix}",
        "tariffs:\n"
        '  - {service_type: VOICE, prefix: "+44", unit: SECOND, price_per_unit: "0.01",\n'
        "     increment_units: 60, minimum_units: 30, setup_fee: 0.05, currency: EUR}\n"
        "  - service_type: INSTANT_MESSAGING\n"
        "    unit: MESSAGE\n"
        "    price_per_unit: 0.05\n"
        "    currency: EUR\n"
        "    description: per message\n",
    )
    voice, messages = read_tariff_file(path)
    assert voice.prefix == "+44"
    assert voice.terms == RateTerms(10_000, 60, 30, 50_000)
    assert (messages.service_type, messages.unit) == (ServiceType.INSTANT_MESSAGING, Unit.MESSAGE)
    assert messages.terms == RateTerms(50_000, 1, 0, 0)
    assert messages.description == "per message"


def test_the_shipped_default_sheet_is_valid() -> None:
    import rating_service

    path = Path(rating_service.__file__).parent / "default_tariffs.yaml"
    tariffs = read_tariff_file(path)
    assert {t.service_type for t in tariffs} == set(ServiceType)
    assert all(t.prefix == "" and t.currency == "EUR" for t in tariffs)


def test_every_bad_csv_row_is_reported_with_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.csv",
        f"{HEADER}\n"
        "VOICE,+44,SECOND,0.01,1,0,,EUR,\n"  # line 2: good
        "TELEPATHY,+44,SECOND,0.01,1,0,,EUR,\n"  # line 3
        "VOICE,+1,SECOND,abc,1,0,,EUR,\n"  # line 4
        "VOICE,+33,SECOND,0.01,1.5,0,,EUR,\n"  # line 5
        "VOICE,+49,SECOND,0.01,1,0,,,\n"  # line 6
        "VOICE,+39,LITRE,0.01,1,0,,EUR,\n"  # line 7
        "VOICE,+31,SECOND,-0.01,1,0,,EUR,\n"  # line 8
        "VOICE,+32,SECOND,0.01,0,0,,EUR,\n"  # line 9
        "VOICE,+34,SECOND,0.01,1,0,,EURO,\n",  # line 10
    )
    problems = _problems(path)
    assert [problem.split(":")[0] for problem in problems] == [
        f"line {number}" for number in range(3, 11)
    ]
    assert "service_type 'TELEPATHY' is not one of VOICE" in problems[0]
    assert "price_per_unit: 'abc' is not an amount" in problems[1]
    assert "increment_units must be a whole number, not '1.5'" in problems[2]
    assert "missing currency" in problems[3]
    assert "unit 'LITRE' is not one of SECOND" in problems[4]
    assert "price_per_unit_micros cannot be negative" in problems[5]
    assert "increment_units must be at least 1" in problems[6]
    assert "not a currency code" in problems[7]


def test_a_row_missing_several_required_columns_names_them_all(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", f"{HEADER}\nVOICE,+44,,,1,0,,,\n")
    assert _problems(path) == ["line 2: missing unit, price_per_unit, currency"]


def test_every_bad_yaml_item_is_reported_with_its_number(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.yaml",
        "tariffs:\n"
        '  - {service_type: VOICE, unit: SECOND, price_per_unit: "0.01", currency: EUR}\n'
        '  - {service_type: VOICE, unit: SECOND, price_per_unit: "1e3", currency: EUR}\n'
        "  - just a string\n"
        '  - {service_type: VIDEO, unit: SECOND, price_per_unit: "0.01", currency: EUR, x: 1}\n',
    )
    problems = _problems(path)
    assert len(problems) == 3
    assert problems[0].startswith("item 2: price_per_unit: '1e3' is not an amount")
    assert problems[1] == "item 3: expected a mapping of column to value"
    assert problems[2] == "item 4: unknown column(s): x"


def test_a_repeated_service_type_and_prefix_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.csv",
        f"{HEADER}\n"
        "VOICE,+44,SECOND,0.01,1,0,,EUR,\n"
        "VIDEO,+44,SECOND,0.02,1,0,,EUR,\n"  # same prefix, other service type: fine
        "VOICE, +44,SECOND,0.03,1,0,,EUR,\n"  # line 4: repeats line 2 once trimmed
        "VOICE,,SECOND,0.01,1,0,,EUR,\n"
        "voice,,SECOND,0.01,1,0,,EUR,\n",  # line 6: repeats line 5
    )
    assert _problems(path) == [
        "line 4: VOICE prefix '+44' repeats line 2",
        "line 6: VOICE prefix '' repeats line 5",
    ]


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.csv",
        "service_type,unit,price_per_unit,currency,colour,zone\n"
        "VOICE,SECOND,0.01,EUR,red,1\n"
        "VIDEO,SECOND,0.01,EUR,blue,2\n",
    )
    assert _problems(path) == [
        "line 2: unknown column(s): colour, zone",
        "line 3: unknown column(s): colour, zone",
    ]


def test_a_row_with_more_values_than_columns_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tariffs.csv",
        "service_type,unit,price_per_unit,currency\nVOICE,SECOND,0.01,EUR,surplus\n",
    )
    (problem,) = _problems(path)
    assert problem.startswith("line 2: the row has more values than the header")


@pytest.mark.parametrize("name", ["tariffs.txt", "tariffs.json", "tariffs", "tariffs.csv.bak"])
def test_a_file_of_another_kind_is_refused(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, f"{HEADER}\nVOICE,+44,SECOND,0.01,1,0,,EUR,\n")
    assert _problems(path) == ["the file must end in .csv, .yaml or .yml"]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path / "absent.csv")
    assert problem.startswith("cannot read it")


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("t.csv", f"{HEADER}\n", "the file holds no tariffs"),
        ("t.csv", "", "the file holds no tariffs"),
        ("t.yaml", "tariffs: []\n", "the file holds no tariffs"),
        ("t.yaml", "", "expected a top-level 'tariffs:' list"),
        ("t.yaml", "- {service_type: VOICE}\n", "expected a top-level 'tariffs:' list"),
        ("t.yaml", "tariffs: {service_type: VOICE}\n", "expected a top-level 'tariffs:' list"),
    ],
)
def test_a_sheet_without_tariffs_is_refused(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    assert _problems(_write(tmp_path, name, text)) == [problem]


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    (problem,) = _problems(_write(tmp_path, "t.yaml", "tariffs: [unclosed\n"))
    assert problem.startswith("not valid YAML")


@pytest.mark.parametrize("increment", ["--5", "²"], ids=["double-minus", "superscript-two"])
def test_an_odd_whole_number_is_reported_not_crashed_on(tmp_path: Path, increment: str) -> None:
    path = _write(tmp_path, "t.csv", f"{HEADER}\nVOICE,+44,SECOND,0.01,{increment},0,,EUR,\n")
    (problem,) = _problems(path)
    assert problem.startswith("line 2: increment_units")


@pytest.mark.parametrize("prefix", ["+44", "0044", "0"])
def test_an_unquoted_yaml_prefix_is_kept_or_refused(tmp_path: Path, prefix: str) -> None:
    path = _write(
        tmp_path,
        "t.yaml",
        "tariffs:\n"
        f'  - {{service_type: VOICE, prefix: {prefix}, unit: SECOND, price_per_unit: "0.01",'
        " currency: EUR}\n",
    )
    try:
        tariffs = read_tariff_file(path)
    except TariffFileError:
        return  # refusing the number is an acceptable fix
    assert [t.prefix for t in tariffs] == [prefix]


def test_an_unquoted_small_yaml_price_is_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "t.yaml",
        "tariffs:\n"
        "  - {service_type: WEB_BROWSING, unit: BYTE, price_per_unit: 0.00001, currency: EUR}\n",
    )
    (web,) = read_tariff_file(path)
    assert web.terms.price_per_unit_micros == 10
