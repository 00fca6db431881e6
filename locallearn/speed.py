"""The GPU path: mixed precision, channels-last memory layout and torch.compile, for every rule.

None of them changes a method's algorithm, only how its arithmetic runs:

- `--amp bf16|fp16`: the rule's step and the evaluation run under `torch.autocast`. bf16 keeps
  float32's exponent range and needs nothing else. fp16 gives each module a `GradScaler`: its
  local loss is scaled before backward, the gradients unscaled before its optimizer steps, and a
  step with an inf/NaN gradient is skipped while the scale backs off (rules whose backward goes
  through `LocalModule.backward`/`step`; the others refuse fp16 and say so).
- `--channels-last`: 4-d parameters and inputs in NHWC layout, which tensor cores prefer.
- `--compile [BACKEND]`: every layer, the classifier and every auxiliary head compiled in place
  (`nn.Module.compile`, so parameter names and checkpoints are unchanged). A graph that dynamo
  cannot compile runs eagerly with a warning (`suppress_errors`). Rules that differentiate twice
  (SGR) or in forward mode (forward gradients) run eagerly: AOTAutograd supports neither; so do
  BackLink (its updates drifted from eager's under inductor) and the BP-free rules.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str | None):
    """A loss scaler per module for fp16 (None otherwise)."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def channels_last_applies(device: torch.device, asked: bool) -> bool:
    """Whether --channels-last is used: on CUDA only. NHWC is a GPU layout, and on the CPU PyTorch
    2.13's kernels corrupted the heap with it (glibc abort in the channels-last step test on an AMD
    EPYC), so there it is ignored with a warning."""
    if asked and device.type != "cuda":
        warnings.warn("--channels-last applies on CUDA only; ignored on the CPU (its channels-last kernels "
                      "crashed PyTorch 2.13 in our tests)", stacklevel=3)
    return asked and device.type == "cuda"


def channels_last(x: torch.Tensor | None) -> torch.Tensor | None:
    return x.contiguous(memory_format=torch.channels_last) if x is not None and x.dim() == 4 else x


def compile_layers(net, rule, backend: str) -> None:
    """Compile every layer, the classifier and every auxiliary head of `net` in place."""
    if not rule.compilable:
        warnings.warn(f"--compile does not apply to method {rule.name} ({rule.compilable_reason}); "
                      "it runs eagerly", stacklevel=2)
        return
    import torch._dynamo

    compiled = [*net.model.layers, net.model.classifier, *net.heads]
    torch._dynamo.config.suppress_errors = True  # what dynamo cannot compile runs eagerly, with a warning
    # every layer of a kind shares one code object (Module._call_impl): each needs its own graph
    limit = max(torch._dynamo.config.recompile_limit, 2 * len(compiled))
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
    for module in compiled:
        module.compile(backend=backend)


def eager(enabled: bool):
    """Run compiled modules eagerly (the measured first step: FLOP counting and saved-tensor hooks
    measure the eager computation, and dynamo must not give up on a frame it saw under them)."""
    return torch.compiler.set_stance("force_eager") if enabled else contextlib.nullcontext()
