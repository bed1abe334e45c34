"""Student architectures by name: ``build_student("lenet5", [1, 28, 28], 10, width=0.5)``.

Importing this package registers every architecture (mlp, lenet5, resnet18, vit).
"""

from cake_core.students import lenet, mlp, resnet, vit  # noqa: F401  (self-registering)
from cake_core.students.registry import (
    StudentArch,
    WidthChoice,
    build_student,
    choose_width,
    default_arch,
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
