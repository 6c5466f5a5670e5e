"""The one registry every pluggable kind uses: names, options, fixed values, and the same errors for all."""

from dataclasses import dataclass

import pytest

from hirm.attacks import ATTACKS
from hirm.erase import METHODS
from hirm.errors import HirmError
from hirm.eval.protocols import PROTOCOLS
from hirm.minicanvas.train import TRAINERS
from hirm.registry import Entry, Registry


@dataclass
class ToyConfig:
    steps: int = 10
    mode: str = "a"


def toy_trainer(run_dir, steps: int = 5, lr: float = 1e-3):
    return run_dir, steps, lr


@pytest.fixture
def toys() -> Registry:
    return Registry("toy", [Entry("plain", ToyConfig, None, "a toy"),
                            Entry("b-mode", ToyConfig, None, "a toy with mode b", fixed={"mode": "b"}),
                            Entry("trainer", None, toy_trainer, "options from the signature")])


def test_config_takes_options_and_keeps_fixed_values(toys):
    assert toys.config("plain", {"steps": 3, "mode": None}) == ToyConfig(steps=3)  # None: not given
    assert toys.config("b-mode", {"steps": 3}) == ToyConfig(steps=3, mode="b")
    assert toys.config("b-mode", {"mode": "b"}) == ToyConfig(mode="b")  # the fixed value itself is fine
    assert toys.config("trainer", {"lr": 0.5}) == {"lr": 0.5}  # a function's keyword arguments
    assert toys["trainer"].options() == ["lr", "steps"]  # positional run_dir is not an option


@pytest.mark.parametrize(("name", "options", "message"), [
    ("nope", {}, "unknown toy 'nope'; available: plain, b-mode, trainer"),
    ("plain", {"stpes": 3}, "toy plain has no option 'stpes'; options: mode, steps"),
    ("b-mode", {"mode": "a"}, "toy b-mode fixes mode='b' (it is what makes it b-mode)"),
    ("trainer", {"workers": 2}, "toy trainer has no option 'workers'; options: lr, steps"),
])
def test_bad_names_and_options_are_one_line_errors(toys, name, options, message):
    with pytest.raises(HirmError) as e:
        toys.config(name, options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_name_registers_once(toys):
    with pytest.raises(ValueError, match="already registered"):
        toys.register(Entry("plain", ToyConfig, None, "again"))


def test_options_given_as_flags_are_named_as_flags():
    flags = Registry("protocol", [Entry("toy", ToyConfig, None, "")], flags=True)
    with pytest.raises(HirmError, match=r"--batch-size does not apply to --protocol toy \(it takes: --mode, --steps\)"):
        flags.config("toy", {"batch_size": 2})


def test_every_kind_of_thing_is_registered_the_same_way():
    for registry in (METHODS, ATTACKS, PROTOCOLS, TRAINERS):
        assert isinstance(registry, Registry) and registry
        for name, entry in registry.items():
            assert entry.name == name and entry.summary and entry.options()
    # the registry turns the options into the entry's config, as each kind's callers use it
    assert METHODS.config("uce", {"lamb": 0.25}).lamb == 0.25
    assert ATTACKS.config("paraphrase", {}) == ATTACKS["paraphrase"].config_cls()
    assert type(PROTOCOLS.config("coco", {})).__name__ == "Coco"
    assert TRAINERS.config("unet", {"steps": 3}) == {"steps": 3}
