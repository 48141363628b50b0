import dataclasses
import enum

import pytest

from fedvla.config import ConfigError, default_values, from_mapping, parse_enum, require


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(kw_only=True)
class Example:
    colour: Colour = Colour.RED
    rate_hz: float = 10.0
    names: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        require(self.rate_hz > 0, "rate_hz", f"must be positive, got {self.rate_hz}", "a number > 0")


def test_from_mapping_coerces_yaml_and_parameter_values() -> None:
    cfg = from_mapping(Example, {"colour": "blue", "rate_hz": 5, "names": ["x", "y"]})
    assert cfg.colour is Colour.BLUE
    assert cfg.rate_hz == 5.0 and isinstance(cfg.rate_hz, float)
    assert cfg.names == ("x", "y")


def test_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(Example, {"colour": "red", "rate": 3.0}, where="camera")
    assert str(err.value) == "camera.rate: unknown setting (allowed: colour, names, rate_hz)"


def test_bad_enum_value_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        parse_enum(Colour, "green", "colour")
    assert str(err.value) == "colour: unknown value 'green' (allowed: red, blue)"
    assert "\n" not in str(err.value)


def test_validation_runs_in_post_init() -> None:
    with pytest.raises(ConfigError, match=r"^rate_hz: must be positive, got -1.0 \(allowed: a number > 0\)$"):
        from_mapping(Example, {"rate_hz": -1.0})


def test_default_values_flatten_enums() -> None:
    assert default_values(Example) == {"colour": "red", "rate_hz": 10.0, "names": ("a",)}
