"""Build hook: compile ``dftflow/_speedups.c`` (the CHGCAR number reader and HDF5 chunk shuffler).

The extension is optional. Without a C compiler the wheel is still built, as a
pure-Python one, and dftflow reads CHGCARs through pymatgen's parser instead
(the same numbers, about half the harvest speed). ``DFTFLOW_REQUIRE_SPEEDUPS=1``
turns a failed compile into a failed build (CI sets it).

The library is compiled under ``build/`` and then either packed into the wheel
or, for an editable install, moved next to the sources with one rename (a new
file, so a process that has the old one loaded is not disturbed).
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "dftflow/_speedups.c"


def compile_speedups(root: Path) -> Path:
    """Compile the extension under ``root/build`` and return the library's path."""
    from setuptools import Distribution, Extension

    unix = os.name == "posix"
    extension = Extension("dftflow._speedups", sources=[SOURCE],
                          extra_compile_args=["-O3", "-Wall"] if unix else ["/O2"])
    build = root / "build" / f"speedups-{sysconfig.get_platform()}-{sysconfig.get_python_version()}"
    cwd = os.getcwd()
    os.chdir(root)  # setuptools resolves the sources relative to the working directory
    try:
        dist = Distribution({"name": "dftflow-speedups", "ext_modules": [extension]})
        command = dist.get_command_obj("build_ext")
        command.build_lib, command.build_temp, command.inplace = str(build / "lib"), str(build / "tmp"), False
        command.ensure_finalized()
        command.run()
    finally:
        os.chdir(cwd)
    built = build / "lib" / "dftflow" / ("_speedups" + sysconfig.get_config_var("EXT_SUFFIX"))
    if not built.is_file():
        raise FileNotFoundError(f"the compiler left no {built}")
    return built


class SpeedupsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        try:
            built = compile_speedups(root)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: build without the extension
            if os.environ.get("DFTFLOW_REQUIRE_SPEEDUPS") == "1":
                raise
            self.app.display_warning(f"dftflow: {SOURCE} was not compiled ({exc}); CHGCARs will be read "
                                     "through pymatgen's parser (the same numbers, slower harvests)")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":  # the editable install imports from the source tree
            staged = root / "dftflow" / (built.name + ".new")
            staged.write_bytes(built.read_bytes())
            os.replace(staged, root / "dftflow" / built.name)
        else:
            build_data["force_include"][str(built)] = f"dftflow/{built.name}"
