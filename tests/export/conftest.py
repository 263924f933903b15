"""One torch thread for these tests: the autouse fixture of ``tests/ptq/conftest.py`` (see its docstring)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_ptq_conftest", Path(__file__).parents[1] / "ptq" / "conftest.py")
_ptq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ptq)
_one_thread = _ptq._one_thread
