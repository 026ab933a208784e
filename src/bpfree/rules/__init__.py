"""Every learning rule, one module per rule family. Importing this package registers them all.

Modules are discovered automatically, so adding a rule is adding a file: no central list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")
