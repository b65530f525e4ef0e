"""Reading a hardware override file (setting ``snakepit_hardware`` / env ``SNAKEPIT_HARDWARE``).

The file holds ``detect().as_dict()`` JSON and replaces detection entirely,
for containers where the tools are missing and for tests. It describes the
hardware exactly as this process should see it: ``CUDA_VISIBLE_DEVICES`` is
not applied to it (use :func:`restrict` to derive a per-device view).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace

from snakepit_celery import jsonfile
from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware import tools
from snakepit_celery.hardware.shape import ShapeError
from snakepit_celery.hardware.types import CpuInfo, HardwareInfo, primary_accelerator

__all__ = ["ENV_VAR", "SETTING", "load_override", "restrict"]

#: The Celery setting naming the override file.
SETTING = "snakepit_hardware"
#: The environment variable naming the override file.
ENV_VAR = "SNAKEPIT_HARDWARE"

_ALLOWED = "a JSON file in the shape of snakepit_celery.hardware.detect().as_dict()"


def load_override(
    path: str | os.PathLike[str],
    *,
    default_cpu: Callable[[], CpuInfo],
    default_platform: Callable[[], str],
    source: str = SETTING,
) -> HardwareInfo:
    """Load and validate an override file; ConfigError naming the setting and the file."""
    where = f"{SETTING} ({source})" if source != SETTING else SETTING
    name = os.fspath(path)
    try:
        data = jsonfile.read(name)
    except jsonfile.JSONFileError as exc:
        raise ConfigError(SETTING, name, _ALLOWED, f"{where}: {exc.about(repr(name))}") from None
    try:
        return HardwareInfo.from_dict(
            data, default_cpu=default_cpu, default_platform=default_platform
        )
    except ShapeError as exc:
        raise ConfigError(
            SETTING,
            name,
            _ALLOWED,
            f"{where}: {name!r} does not describe hardware: {exc}",
        ) from exc


def restrict(info: HardwareInfo, visible: str | Sequence[str | int]) -> HardwareInfo:
    """The view of ``info`` a process started with ``CUDA_VISIBLE_DEVICES=visible`` would get.

    Used to write a per-device override for a child worker. ``visible`` is the
    variable's text or a list of indices/UUIDs; ROCm devices are filtered the
    same way.
    """
    spec = visible if isinstance(visible, str) else ",".join(str(v) for v in visible)
    cuda = info.cuda
    if cuda is not None:
        devices = tools.visible(cuda.devices, spec)
        cuda = replace(cuda, devices=tuple(devices)) if devices else None
    rocm = info.rocm
    if rocm is not None:
        devices = tools.visible(rocm.devices, spec)
        rocm = replace(rocm, devices=tuple(devices)) if devices else None
    return replace(
        info, cuda=cuda, rocm=rocm, accelerator=primary_accelerator(cuda, info.mps, rocm)
    )
