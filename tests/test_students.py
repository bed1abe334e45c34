"""Student architecture registry: shapes, sizes, validation, TorchScript export, numerics."""

import functools
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from cake_core.config import LIMITS
from cake_core.errors import SpecError
from cake_core.students import (
    StudentArch,
    build_student,
    choose_width,
    default_arch,
    get_arch,
    list_archs,
    register,
)
from cake_core.students.lenet import side_plan
from cake_core.students.registry import MAX_WIDTH, MIN_WIDTH, budget_widths

ARCHS = ("lenet5", "mlp", "resnet18", "vit")
SHAPES = ((13,), (64,), (1, 8, 8), (1, 28, 28), (3, 32, 32))
CASES = [(name, shape) for name in ARCHS for shape in SHAPES if get_arch(name).accepts(shape)]


def _ids(case: tuple[str, tuple[int, ...]]) -> str:
    name, shape = case
    return f"{name}-{'x'.join(map(str, shape))}"


# Widths for the numerics tests: small enough to keep the suite fast on 2 CPU cores.
SMALL_WIDTH = {"lenet5": 0.5, "mlp": 0.5, "resnet18": 0.25, "vit": 0.5}
FIRST_LAYER = {
    "lenet5": "features.0.weight",
    "mlp": "body.0.weight",
    "resnet18": "stem.0.weight",
    "vit": "embed.proj.weight",
}


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are tiny: intra-op threads only add synchronisation cost, which gets severe
    # when the CPUs are shared with other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- registry ------------------------------------------------------------------------------


def test_list_archs_names_sorted() -> None:
    assert [a.name for a in list_archs()] == ["lenet5", "mlp", "resnet18", "vit"]
    assert all(isinstance(a, StudentArch) for a in list_archs())


def test_accepted_ranks() -> None:
    assert get_arch("mlp").input_ranks == (1, 2, 3)
    assert get_arch("lenet5").input_ranks == (3,)
    assert get_arch("resnet18").input_ranks == (3,)
    assert get_arch("vit").input_ranks == (2, 3)
    assert not get_arch("lenet5").accepts([13])
    assert not get_arch("mlp").accepts([0, 28, 28])
    assert not get_arch("mlp").accepts([])
    assert not get_arch("mlp").accepts([True, 3])


def test_default_arch() -> None:
    assert default_arch([1, 28, 28]) == "lenet5"
    assert default_arch([3, 8, 8]) == "lenet5"
    assert default_arch([13]) == "mlp"
    assert default_arch([16, 8]) == "mlp"


def test_describe_keys() -> None:
    arch = get_arch("lenet5")
    assert arch.describe() == {
        "name": "lenet5",
        "description": arch.description,
        "input_ranks": [3],
    }
    info = arch.describe([1, 28, 28], 10)
    assert set(info) == {"name", "description", "input_ranks", "parameters"}
    assert info["parameters"] == 61_706
    assert arch.describe([1, 28, 28], 10, width=0.5)["parameters"] < info["parameters"]
    assert "parameters" not in arch.describe([1, 28, 28])
    for a in list_archs():
        assert a.description and set(a.describe([3, 32, 32], 10)) == set(info)


def test_duplicate_register_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_arch("mlp"))


# --- shapes and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_output_shape_and_parameter_count(
    case: tuple[str, tuple[int, ...]], num_classes: int
) -> None:
    name, shape = case
    model = build_student(name, shape, num_classes).eval()
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert get_arch(name).parameter_count(shape, num_classes) == _param_count(model)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_half_width_is_smaller(case: tuple[str, tuple[int, ...]]) -> None:
    name, shape = case
    arch = get_arch(name)
    half, full = arch.parameter_count(shape, 10, 0.5), arch.parameter_count(shape, 10, 1.0)
    assert half < full
    assert _param_count(arch.build(shape, 10, 0.5)) == half


def test_known_parameter_counts() -> None:
    # Reference sizes: the classic LeNet-5 on MNIST and the CIFAR-style ResNet-18.
    assert get_arch("lenet5").parameter_count([1, 28, 28], 10) == 61_706
    assert get_arch("resnet18").parameter_count([3, 32, 32], 10) == 11_173_962


def test_lenet5_half_channel_counts() -> None:
    model = build_student("lenet5", [1, 28, 28], 10, width=0.5)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs == [3, 8]
    assert linears == [60, 42, 10]
    # 28 px is padded on the first conv, giving the classic 5x5 maps before the classifier.
    first_fc = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_fc.in_features == 8 * 5 * 5


def test_lenet5_full_channel_counts() -> None:
    model = build_student("lenet5", [3, 32, 32], 10)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [6, 16]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 10)]


@pytest.mark.parametrize("side", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 28, 31, 32, 33, 48, 64, 100])
def test_lenet5_side_plan_never_collapses(side: int) -> None:
    *_, out = side_plan(side)
    assert out >= 1


@pytest.mark.parametrize(
    "name, shape",
    [
        ("lenet5", (3, 17, 40)),
        ("lenet5", (1, 8, 64)),
        ("lenet5", (1, 64, 64)),
        ("resnet18", (3, 12, 20)),
        ("vit", (3, 17, 40)),
        ("vit", (1, 64, 64)),
        ("vit", (16, 8)),
        ("mlp", (16, 8)),
    ],
)
def test_other_shapes(name: str, shape: tuple[int, ...]) -> None:
    width = 0.25 if name == "resnet18" else 1.0
    model = build_student(name, shape, 3, width).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 3)


def test_vit_dim_is_multiple_of_heads() -> None:
    for width in (0.1, 0.3, 0.5, 1.0, 1.7):
        model = build_student("vit", [1, 8, 8], 3, width)
        dim = model.head.in_features
        assert dim % 4 == 0 and dim >= 4
    assert build_student("vit", [3, 32, 32], 3).head.in_features == 128


def test_width_limits_inclusive() -> None:
    assert get_arch("lenet5").parameter_count([1, 28, 28], 10, 8) > 61_706
    assert get_arch("mlp").parameter_count([13], 2, 0.001) > 0


# --- the default width: a parameter budget ---------------------------------------------------


def test_budget_widths_span_the_accepted_minimum_to_the_reference_size() -> None:
    widths = budget_widths()
    assert LIMITS["student.width"] == (MIN_WIDTH, MAX_WIDTH)
    assert widths[0] == MIN_WIDTH and widths[-1] == 1.0
    assert widths == sorted(set(widths)) and len(widths) == 31


@functools.cache
def _ladder_counts(name: str, shape: tuple[int, ...]) -> dict[float, int]:
    """Parameters (3 classes) at every width of the default's ladder: the tests' oracle."""
    return {w: get_arch(name).parameter_count(shape, 3, w) for w in budget_widths()}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_parameters_grow_with_the_width(case: tuple[str, tuple[int, ...]]) -> None:
    """What lets choose_width bisect instead of counting every width of the ladder."""
    counts = list(_ladder_counts(*case).values())
    assert counts == sorted(counts)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("share", [0.01, 0.2, 0.6, 3.0])
def test_choose_width_is_the_largest_within_half_the_teacher(
    case: tuple[str, tuple[int, ...]], share: float
) -> None:
    name, shape = case
    counts = _ladder_counts(name, shape)
    # A teacher whose half is `share` of the reference-size student.
    teacher = int(2 * share * counts[1.0])
    choice = choose_width(name, shape, 3, teacher)
    assert choice.budget == teacher // 2
    assert choice.parameters == counts[choice.width]
    fitting = [w for w, n in counts.items() if n <= teacher // 2]
    if fitting:  # the largest that fits: linear scan as the oracle
        assert choice.within_budget and choice.width == max(fitting)
        assert choice.parameters <= teacher / 2
        assert "no width given" in choice.reason and f"{choice.width:g}" in choice.reason
    else:
        assert not choice.within_budget and choice.width == MIN_WIDTH
        assert "even the smallest width 0.0625" in choice.reason
        assert "the smallest width is used" in choice.reason


def test_choose_width_for_the_bundled_teachers() -> None:
    """The cases the issue names: wine MLP (1,603 parameters in the issue) and digits CNN."""
    wine = choose_width("mlp", [13], 3, 1603)
    assert (wine.width, wine.parameters, wine.budget) == (0.0625, 579, 801)
    assert wine.reason == (
        "no width given: 0.0625 is the largest width (of 0.0625..1 in steps of 1/32) that keeps "
        "mlp within half the teacher's 1,603 parameters (579 <= 801)"
    )
    digits = choose_width("lenet5", [1, 8, 8], 10, 15_338)
    assert digits.within_budget and digits.parameters <= 7669 and digits.width == 0.5625


def test_choose_width_never_above_the_reference_size() -> None:
    big = choose_width("lenet5", [1, 8, 8], 10, 10**9)
    assert big.within_budget and big.width == 1.0
    assert "1, the largest width a default student gets" in big.reason


@pytest.mark.parametrize("teacher", [0, 1, 100])
def test_choose_width_for_a_teacher_smaller_than_any_student(teacher: int) -> None:
    choice = choose_width("lenet5", [1, 8, 8], 10, teacher)
    assert (choice.width, choice.within_budget) == (MIN_WIDTH, False)
    assert choice.parameters == get_arch("lenet5").parameter_count([1, 8, 8], 10, MIN_WIDTH)
    assert f"half the teacher's {teacher:,} ({teacher // 2:,})" in choice.reason


def test_choose_width_names_bad_arguments() -> None:
    with pytest.raises(SpecError, match="unknown architecture"):
        choose_width("alexnet", [13], 3, 1000)
    with pytest.raises(SpecError, match="needs an input of rank"):
        choose_width("lenet5", [13], 3, 1000)


# --- validation -----------------------------------------------------------------------------


def test_unknown_arch() -> None:
    with pytest.raises(SpecError) as err:
        get_arch("alexnet")
    assert err.value.field == "student.arch"
    assert err.value.reason == (
        "unknown architecture 'alexnet'; choose one of: lenet5, mlp, resnet18, vit"
    )
    with pytest.raises(SpecError, match="unknown architecture"):
        build_student("alexnet", [1, 28, 28], 10)


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("lenet5", [13], "lenet5 needs an input of rank 3 [channels, height, width]; got [13]"),
        ("resnet18", [28, 28], "resnet18 needs an input of rank 3 [channels, height, width]"),
        ("vit", [13], "vit needs an input of rank 2 [sequence, dim] or 3 [channels, height, "),
        ("mlp", [1, 1, 28, 28], "mlp needs an input of rank 1 [features], 2 [sequence, dim] or"),
    ],
)
def test_wrong_rank(name: str, shape: list[int], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        build_student(name, shape, 10)
    assert err.value.field == "student.arch"
    assert err.value.reason.startswith(expected)
    assert str(err.value).startswith("student.arch: ")


@pytest.mark.parametrize("shape", [[0, 28, 28], [1, -28, 28], [], [1.5, 8, 8]])
def test_bad_shape(shape: list) -> None:
    with pytest.raises(SpecError, match="positive integers") as err:
        build_student("lenet5", shape, 10)
    assert err.value.field == "student.arch"


@pytest.mark.parametrize("width", [0, -1.0, 8.01, 100, math.nan, math.inf, True, "1", None])
@pytest.mark.parametrize("method", ["build", "parameter_count"])
def test_bad_width(width: object, method: str) -> None:
    with pytest.raises(SpecError, match="width must be") as err:
        getattr(get_arch("mlp"), method)([13], 3, width)
    assert err.value.field == "student.width"


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(SpecError, match="classes") as err:
        build_student("mlp", [13], num_classes)
    assert err.value.field == "student.num_classes"


# --- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_deterministic_init(name: str) -> None:
    shape = (13,) if name == "mlp" else (1, 8, 8)
    torch.manual_seed(123)
    a = build_student(name, shape, 3, 0.5).state_dict()
    torch.manual_seed(123)
    get_arch(name).parameter_count(shape, 3, 0.5)  # must not consume the global RNG
    b = build_student(name, shape, 3, 0.5).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_backward_reaches_first_layer(case: tuple[str, tuple[int, ...]]) -> None:
    name, shape = case
    model = build_student(name, shape, 3, SMALL_WIDTH[name]).train()
    x = torch.randn(4, *shape, requires_grad=True)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    first = model.get_parameter(FIRST_LAYER[name])
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["lenet5", "mlp", "resnet18", "vit"])
def test_channels_last(name: str) -> None:
    shape = (3, 32, 32)
    model = build_student(name, shape, 10, SMALL_WIDTH[name]).eval()
    x = torch.randn(3, *shape)
    reference = model(x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x_cl), reference, rtol=1e-4, atol=1e-4)
    model.train()
    model(x_cl).sum().backward()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_autocast_bfloat16(case: tuple[str, tuple[int, ...]]) -> None:
    name, shape = case
    model = build_student(name, shape, 10, SMALL_WIDTH[name]).eval()
    x = torch.randn(3, *shape)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    scale = reference.abs().max().item() + 1e-3
    assert (out.float() - reference).abs().max().item() < 0.1 * scale + 0.05


# --- TorchScript export ---------------------------------------------------------------------

# Runs in a fresh interpreter: isolated mode (-I), a temporary cwd, no PYTHONPATH. The import
# hook also hides the project from an editable install, so the exported files must stand alone.
_CLEAN_CHILD = r"""
import importlib.abc
import sys
from pathlib import Path


class HideProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"cake_core", "cake_cli"}:
            raise ImportError(f"{name} is not available in this process")
        return None


sys.meta_path.insert(0, HideProject())
try:
    import cake_core  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("cake_core must not be importable here")

import torch

root = Path(sys.argv[1])
for path in sorted(root.glob("*.pt")):
    model = torch.jit.load(str(path))
    x = torch.load(root / (path.stem + ".in"))
    outputs = {"plain": model(x)}
    if x.dim() == 4:
        outputs["channels_last"] = model(x.contiguous(memory_format=torch.channels_last))
    torch.save(outputs, root / (path.stem + ".out"))
    assert "cake_core" not in sys.modules
print("ok")
"""

EXPORTS = [
    ("mlp", (13,), 1.0),
    ("mlp", (1, 28, 28), 0.5),
    ("lenet5", (1, 28, 28), 1.0),
    ("lenet5", (3, 17, 40), 0.5),
    ("resnet18", (3, 32, 32), 0.25),
    ("vit", (3, 30, 30), 0.5),
    ("vit", (16, 8), 0.5),
]


def test_torchscript_export_runs_without_project(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    expected: dict[str, torch.Tensor] = {}
    for i, (name, shape, width) in enumerate(EXPORTS):
        model = build_student(name, shape, 5, width).eval()
        model(torch.randn(2, *shape))  # use at batch 2 before export ...
        scripted = torch.jit.script(model)
        assert scripted(torch.randn(2, *shape)).shape == (2, 5)
        stem = f"{i}_{name}"
        torch.jit.save(scripted, str(models_dir / f"{stem}.pt"))
        x = torch.randn(7, *shape)  # ... and compare at batch 7 after it
        torch.save(x, models_dir / f"{stem}.in")
        with torch.no_grad():
            expected[stem] = model(x)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-I", "-c", _CLEAN_CHILD, str(models_dir)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

    for stem, reference in expected.items():
        outputs = torch.load(models_dir / f"{stem}.out")
        assert outputs["plain"].shape == reference.shape == (7, 5)
        for out in outputs.values():
            torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5, msg=stem)


@pytest.mark.parametrize("name", ARCHS)
def test_scripted_any_batch_size(name: str) -> None:
    shape = (13,) if name == "mlp" else (1, 8, 8)
    model = build_student(name, shape, 4, SMALL_WIDTH[name]).eval()
    scripted = torch.jit.script(model)
    for batch in (1, 3, 9):
        x = torch.randn(batch, *shape)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scripted(torch.randn(2, *shape)).shape == (2, 4)
