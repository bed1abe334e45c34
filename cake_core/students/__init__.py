"""Student architectures by name: ``build_student("lenet5", [1, 28, 28], 10, width=0.5)``.

Importing this package registers every architecture (mlp, lenet5, resnet18, vit).
``default_arch`` comes from its home, the torch-free :mod:`cake_core.architectures`; the
registry does not pass it on.
"""

from cake_core.architectures import default_arch
from cake_core.students import lenet, mlp, resnet, vit  # noqa: F401  (self-registering)
from cake_core.students.registry import (
    StudentArch,
    WidthChoice,
    build_student,
    choose_width,
    get_arch,
    list_archs,
    register,
)

__all__ = [
    "StudentArch",
    "WidthChoice",
    "build_student",
    "choose_width",
    "default_arch",
    "get_arch",
    "list_archs",
    "register",
]
