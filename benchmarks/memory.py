"""Peak memory of one call, shared by the benchmark scripts (``python benchmarks/<script>.py`` puts this
folder on ``sys.path``).

- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the call.
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of the CPU allocator
  with the running total of bytes allocated since profiling started; the peak is the largest running total
  above the level before the first event. This reads the profiler's event tree
  (``prof.profiler.kineto_results.experimental_event_tree()``), an experimental API: ``None`` when it yields
  no allocation events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["peak_bytes", "sync"]

T = TypeVar("T")


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(run: Callable[[], T], device: torch.device) -> tuple[int | None, T]:
    """(bytes allocated during ``run()`` above the level before it, its result)."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before, out
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    allocations: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        extra = event.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation":
            allocations.append((event.start_time_ns, extra.alloc_size, extra.total_allocated))
        stack.extend(event.children)
    if not allocations:
        return None, out
    allocations.sort()
    _, first_size, first_total = allocations[0]
    baseline = first_total - first_size  # running total before the first recorded event (0 in practice)
    return max(0, max(total for _, _, total in allocations) - baseline), out
