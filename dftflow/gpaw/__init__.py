"""The local real-DFT engine: GPAW in plane-wave PAW mode.

GPAW's internal API used here (the restart from a supplied density) changes
between releases; :data:`SUPPORTED` is the version range it is tested with.
"""

SUPPORTED = ("26.",)


def check_version() -> str:
    """The installed GPAW version; a clear error when it is missing or unsupported."""
    from dftflow.errors import DftflowError

    try:
        import gpaw
    except ImportError as exc:
        raise DftflowError("GPAW is not installed: run scripts/install_gpaw.sh "
                           "(needs libxc-dev libopenblas-dev libfftw3-dev g++)") from exc
    version = gpaw.__version__
    if not version.startswith(SUPPORTED):
        raise DftflowError(f"GPAW {version} is not supported (tested: {', '.join(v + 'x' for v in SUPPORTED)}); "
                           "install gpaw==26.7.0")
    return version
