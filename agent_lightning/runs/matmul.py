"""float32 matrix multiplies of a run: `trainer.float32_matmul_precision`, set for the run and given back after."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger("agent_lightning")

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values
_hinted = False  # the hint is said once per process, not once per trial of a search


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware tiles (Intel AMX, Xeon 4th generation on)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up rather than assumed
    return bool(probe and probe())


def matmul_hint(configured: str | None, precision: str, on_cpu: bool) -> str | None:
    """The line telling a float32 CPU run that `medium` would use the AMX units, or None where it would not."""
    if configured is not None or not on_cpu or str(precision) not in ("32-true", "32") or not cpu_has_amx():
        return None
    if not _cpu_matmuls_in_float32():  # the caller chose already
        return None
    return (
        "this CPU has AMX units: trainer.float32_matmul_precision=medium multiplies float32 matrices in bfloat16 "
        "with float32 sums, faster for wider models and larger batches (docs/speed.md)"
    )


def _cpu_matmuls_in_float32() -> bool:
    cpu = getattr(torch.backends.mkldnn, "matmul", None)  # per-backend settings: torch 2.9 on
    if cpu is not None and hasattr(cpu, "fp32_precision"):
        return cpu.fp32_precision in ("none", "ieee")
    return torch.get_float32_matmul_precision() == "highest"


def log_matmul_hint(configured: str | None, precision: str, on_cpu: bool) -> None:
    """Log `matmul_hint`'s line, once per process."""
    global _hinted
    hint = matmul_hint(configured, precision, on_cpu)
    if hint and not _hinted:
        log.info(hint)
        _hinted = True


# Where torch 2.9 on keeps the setting per backend, besides its one-name setting; parents first, since setting
# one sets its children. All are saved and given back: the one-name getter raises once a caller has used the
# per-backend settings, and its value, set back alone, would carry CUDA's TF32 switch over to the CPU.
_SETTINGS = tuple(
    holder
    for holder in (
        torch.backends,
        torch.backends.mkldnn,
        getattr(torch.backends.cuda, "matmul", None),
        getattr(torch.backends.mkldnn, "matmul", None),
    )
    if hasattr(holder, "fp32_precision")
)


@contextmanager
def float32_matmul_precision(configured: str | None) -> Iterator[None]:
    """Set torch's float32 matmul precision inside (None: leave it as it is) and give the caller's back after."""
    if configured is None:
        yield
        return
    before = [holder.fp32_precision for holder in _SETTINGS]
    try:
        named = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller set per-backend values: they alone are given back
        named = None
    torch.set_float32_matmul_precision(configured)
    try:
        yield
    finally:
        if named is not None:
            torch.set_float32_matmul_precision(named)
        for holder, value in zip(_SETTINGS, before, strict=True):
            holder.fp32_precision = value
