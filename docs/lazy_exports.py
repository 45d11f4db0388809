"""Griffe extension for the API reference: makes fastvid's lazily exported names visible to mkdocstrings.

fastvid's packages import their public names on first use (a module-level `_EXPORTS = {name: module}`
read by the module's `__getattr__`), so `import fastvid` stays light. Static analysis sees no import of
those names; this extension reads the same `_EXPORTS` dict and adds each name as an alias of the object
it names, so `::: fastvid.data.VideoLoader` documents exactly what `fastvid.data.VideoLoader` returns.
"""

from __future__ import annotations

import ast

import griffe


class LazyExports(griffe.Extension):
    def on_module(self, *, mod: griffe.Module, **kwargs) -> None:
        exports = mod.members.get("_EXPORTS")
        if exports is None or exports.is_alias or not exports.is_attribute or exports.value is None:
            return
        for name, module_path in ast.literal_eval(str(exports.value)).items():
            if name not in mod.members:
                mod.set_member(name, griffe.Alias(name, f"{module_path}.{name}", parent=mod))
