"""Feature sets by name, from a project's `features/` directory: a module `<name>.py` defining
`FEATURE_SET = FeatureSet(...)`. Selecting it (`features.sets=[...]`, or nothing: every set of the project)
is all the pipeline and serving code need.

Project modules are loaded from their files (a project is not a Python package, and its folder may be
called `features` like this package), each under a module name of its own (`medallion_features_<hash>.<name>`),
so that two projects in one process do not collide.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Sequence

from features.declarations import FeatureDeclarationError, FeatureError, FeatureSet, validate_all

# the project used when none is named: the shipped sample (same default as the `medallion` command)
SAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "examples" / "sample"


def _project(project: Optional[Path | str]) -> Path:
    return Path(project or os.environ.get("MEDALLION_PROJECT") or SAMPLE_PROJECT).expanduser().resolve()


def module_name(project: Path, name: str) -> str:
    return f"medallion_features_{hashlib.sha256(str(project).encode()).hexdigest()[:10]}.{name}"


def load_module(project: Optional[Path | str], name: str) -> ModuleType:
    """The feature module `name` of the project, loaded once per process."""
    root = _project(project)
    qualified = module_name(root, name)
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = root / "features" / f"{name}.py"
    if not path.is_file():
        raise FeatureDeclarationError(f"unknown feature set {name!r}: no module {path}")
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except FeatureError as exc:  # a feature of the module failed its checks as it was built
        del sys.modules[qualified]
        raise FeatureDeclarationError(f"feature set {name!r}: {exc}") from None
    except Exception:
        del sys.modules[qualified]
        raise
    return module


def feature_set(name: str, project: Optional[Path | str] = None) -> FeatureSet:
    declared = getattr(load_module(project, name), "FEATURE_SET", None)
    if not isinstance(declared, FeatureSet):
        raise FeatureDeclarationError(f"features/{name}.py does not define FEATURE_SET = FeatureSet(...)")
    return declared


def project_set_names(project: Optional[Path | str] = None) -> List[str]:
    """Every feature module of the project, by file name."""
    folder = _project(project) / "features"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")) if folder.is_dir() else []


def feature_sets(names: Optional[Sequence[str]] = None, project: Optional[Path | str] = None) -> List[FeatureSet]:
    """The named sets of the project (None: all of them), checked together."""
    chosen = project_set_names(project) if names is None else list(names)
    sets = [feature_set(n, project) for n in chosen]
    validate_all(sets)
    return sets
