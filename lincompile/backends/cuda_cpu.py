"""Target ``cuda-cpu``: the CUDA backend's kernels run on the CPU by the emulator in
``templates/cuda/cuda_cpu.h`` (see :mod:`lincompile.backends.cuda`)."""

from .cuda import compile_cpu as compile

__all__ = ["compile"]
