"""Device-independent measurements of one training step.

`ActivationMeter` counts the bytes held by tensors that autograd saves for backward, through
`torch.autograd.graph.saved_tensors_hooks`: a storage is counted once however many tensors view
it, parameters are excluded, and the bytes are released when autograd frees the saved tensor
(after its backward). A tensor that a rule keeps alive outside any graph (SGR's gradient handed
to the next module, a link's error) is counted by passing it through `held(tensor)` when it is
made: every running meter counts it until that tensor object is garbage-collected. Its `peak` is
the activation memory claim of a method, checkable on a CPU.
`count_flops` wraps torch.utils.flop_counter; on CUDA, `max_memory_allocated` is read as well.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        storage = t.untyped_storage()
        return ("storage", t.device.type, t.device.index, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage (functorch wrappers)
        return ("tensor", id(t)), t.numel() * t.element_size()


class _Saved:
    """What autograd keeps instead of the tensor; releases the count when autograd drops it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: tuple, meter: "ActivationMeter"):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


_running = threading.local()  # the meters entered in this thread, like saved_tensors_hooks


def _running_meters() -> list["ActivationMeter"]:
    if not hasattr(_running, "meters"):
        _running.meters = []
    return _running.meters


def held(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, counted as activation memory by every running `ActivationMeter` until this tensor
    object is garbage-collected. For what a rule keeps alive that autograd does not save (a gradient
    handed down to the next module): keep and hand on this very object, not a new `.detach()` of it."""
    for meter in _running_meters():
        meter.hold(tensor)
    return tensor


class ActivationMeter:
    def __init__(self, parameters: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(p)[0] for p in parameters}
        self._live: dict[tuple, list[int]] = {}  # key -> [bytes, references]
        self.current = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _count(self, tensor: torch.Tensor) -> tuple | None:
        """One more reference to the storage of `tensor`; its key, or None for a parameter."""
        key, nbytes = _storage_key(tensor)
        if key in self._excluded:
            return None
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [nbytes, 0]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        return key

    def _pack(self, tensor: torch.Tensor):
        key = self._count(tensor)
        return tensor if key is None else _Saved(tensor, key, self)

    def hold(self, tensor: torch.Tensor) -> None:
        """Count `tensor` until the tensor object dies (see `held`)."""
        key = self._count(tensor)
        if key is not None:
            weakref.finalize(tensor, self._release, key).atexit = False

    @staticmethod
    def _unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key: tuple) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.current -= entry[0]

    def __enter__(self) -> "ActivationMeter":
        self._hooks.__enter__()
        _running_meters().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _running_meters().remove(self)
        self._hooks.__exit__(*exc)


@contextlib.contextmanager
def measure_step(parameters: Iterable[torch.Tensor], device: torch.device):
    """Measure everything about the steps run inside: yields a dict filled on exit."""
    found: dict = {}
    meter = ActivationMeter(parameters)
    flops = FlopCounterMode(display=False)
    with flops, meter:
        yield found
    found["peak_activation_bytes"] = meter.peak
    found["flops_per_step"] = int(flops.get_total_flops())
