"""ComfyUI's GPU memory paths on a CPU, for tests: ComfyUI's own ``ops.py``, ``model_patcher.py`` and
``model_management.py`` run unchanged; only what a CPU lacks is stood in for.

* comfy_aimdo's raw-memory primitives: the vbar (``ModelVBAR``: allocation, page faulting,
  residency signatures, eviction), the per-stream cast buffers (``VRAMBuffer``, handed out from
  offset 0 each time), the raw-pointer tensor view (``aimdo_to_tensor``: a new tensor over the same
  bytes with its own version counter, as ``torch.as_tensor(__cuda_array_interface__)`` makes) and
  the pinned host buffers (unused: pinned memory is off, as ``--disable-pinned-memory``).
* two CUDA offload streams that run synchronously (``comfy.model_management.STREAMS``).
* two devices. A CPU build of torch has one, and ComfyUI's ops take the vbar path only when the
  weight lives on another device than the input and that device is not the CPU. So the weights
  report ``cpu:1`` (the host, where the file's memory map lives; ``HostWeight``) and ``comfy.ops``
  sees the plain ``cpu`` device of the activations as the card (``_OpsView``).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import types

import torch

HOST = torch.device("cpu", 1)  # where DynamicVRAM's parameters stay (the file's memory map)
CARD = torch.device("cpu")  # where the activations live: the "GPU" as comfy.ops sees it
LOAD_DEVICE = torch.device("cpu", 0)  # the patcher's load device (not == CARD, so a vbar is made)
_addresses = itertools.count(1 << 40, 1 << 36)


def _memory(size: int) -> torch.Tensor:
    """Raw device memory: bytes, never an inference tensor (the views over it may be)."""
    with torch.inference_mode(False):
        return torch.empty(size, dtype=torch.uint8)


def _raw_view(backing: torch.Tensor, offset: int, size: int) -> torch.Tensor:
    """A uint8 tensor over ``backing``'s bytes that autograd cannot connect to it: its own version
    counter, no ``_base``, like the raw-pointer tensors of comfy_aimdo."""
    view = torch.empty(0, dtype=torch.uint8)
    view.set_(backing.untyped_storage(), backing.storage_offset() + offset, (size,))
    return view


class StandInVBAR:
    """``comfy_aimdo.model_vbar.ModelVBAR``: per-allocation pages that become resident when faulted
    in, are refused under ``pressure`` (VBAR_FAULT_OOM: ComfyUI then uses the cast buffers), and can
    be evicted (the page given to someone else: its bytes are overwritten)."""

    instances: list[StandInVBAR] = []
    pressure = False  # set by the tests (class-wide: the vbar is made inside the node's load)

    def __init__(self, size, device):
        self.device, self.max_size, self.offset = device, size, 0
        self.base_addr = next(_addresses)
        self.pages: dict[int, torch.Tensor] = {}
        self.generation: dict[int, int] = {}
        self._counter = itertools.count(1)
        StandInVBAR.instances.append(self)

    def alloc(self, num_bytes):
        self.offset = (self.offset + 511) & ~511
        if self.offset + num_bytes > self.max_size:
            raise MemoryError("VBAR OOM")
        address = self.base_addr + self.offset
        self.offset += num_bytes
        return (self, address, num_bytes)

    def fault(self, address, size):
        if self.pressure:
            return None
        if address not in self.pages:
            self.pages[address] = _memory(size)
            self.generation[address] = next(self._counter)
        return (ctypes.c_uint32 * 2)(self.generation[address], 0)

    def raw(self, address, size):
        return _raw_view(self.pages[address], 0, size)

    def evict(self):
        """Every page goes to another allocation: new bytes, and the next fault copies again."""
        for address, page in self.pages.items():
            page.fill_(0x7F)
            self.generation[address] = next(self._counter)
        freed = sum(page.numel() for page in self.pages.values())
        return freed

    def free_memory(self, size_bytes):
        return self.evict()

    def loaded_size(self):
        return sum(page.numel() for page in self.pages.values())

    def unpin(self, address, size):
        pass

    def prioritize(self):
        pass

    def deprioritize(self):
        pass

    def set_watermark_limit(self, size_bytes):
        pass

    def set_watermark(self, size_bytes):
        pass

    def get_nr_pages(self):
        return len(self.pages)

    def get_watermark(self):
        return 0

    def get_residency(self):
        return [1] * len(self.pages)


class StandInVRAMBuffer:
    """``comfy_aimdo.vram_buffer.VRAMBuffer``: one reservation per offload stream, handed out from
    the offset the caller asks for (ComfyUI asks for 0 on every op)."""

    def __init__(self, max_size, device):
        self.device, self.max_size = device, max_size
        self.base_addr = next(_addresses)
        self.backing = torch.empty(0, dtype=torch.uint8)

    def size(self):
        return self.backing.numel()

    def get(self, size, offset=0):
        required = int(size) + int(offset)
        if required > self.backing.numel():
            # The real one grows in place (the address stays); here views made before a growth keep
            # the old bytes. The largest weight (the LLM adapter's embedding) comes first, in the
            # prompt's encoding, so the training ops all share the grown buffer.
            self.backing = _memory((required + (16 << 20) - 1) & ~((16 << 20) - 1))
        return (self, self.base_addr + int(offset), int(size))

    def raw(self, address, size):
        return _raw_view(self.backing, address - self.base_addr, size)


class StandInHostBuffer:
    """``comfy_aimdo.host_buffer.HostBuffer``: pinned host memory, never used here."""

    def __init__(self, *args, **kwargs):
        self.size = 0

    def extend(self, *args, **kwargs):
        raise RuntimeError("pinned memory is off in the stand-ins")

    def truncate(self, *args, **kwargs):
        return True

    def get_raw_address(self):
        return 0


def aimdo_to_tensor(alloc, device):
    owner, address, size = alloc
    return owner.raw(address, size)


class FakeStream:
    """A CUDA offload stream that runs synchronously."""

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass

    @staticmethod
    def as_context(stream):
        return contextlib.nullcontext()


class HostWeight(torch.nn.Parameter):
    """A parameter in host memory, as DynamicVRAM leaves them: reports the host device."""

    @property
    def device(self):
        return HOST


class _CardView(types.ModuleType):
    """``comfy.model_management`` as ``comfy.ops`` sees it on a machine with a card: the
    activations' device is not the CPU. Everything else is ComfyUI's own."""

    def __init__(self, model_management):
        super().__init__(model_management.__name__)
        self._mm = model_management

    def __getattr__(self, name):
        return getattr(self._mm, name)

    def is_device_cpu(self, device):
        return False if device == CARD else self._mm.is_device_cpu(device)


class _OpsView(types.ModuleType):
    """The ``comfy`` package as ``comfy.ops`` sees it: ``model_management`` through ``_CardView``."""

    def __init__(self, comfy_package, model_management):
        super().__init__("comfy")
        self._comfy = comfy_package
        self.model_management = _CardView(model_management)

    def __getattr__(self, name):
        return getattr(self._comfy, name)


def install(monkeypatch, cast_streams: bool = True, pressure: bool = False):
    """The stand-ins for one test (``monkeypatch`` undoes everything)."""
    import comfy
    import comfy.cli_args
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy_aimdo.host_buffer
    import comfy_aimdo.model_vbar
    import comfy_aimdo.torch
    import comfy_aimdo.vram_buffer

    monkeypatch.setattr(comfy_aimdo.model_vbar, "ModelVBAR", StandInVBAR)
    monkeypatch.setattr(comfy_aimdo.vram_buffer, "VRAMBuffer", StandInVRAMBuffer)
    monkeypatch.setattr(comfy_aimdo.torch, "aimdo_to_tensor", aimdo_to_tensor)
    monkeypatch.setattr(comfy_aimdo.host_buffer, "HostBuffer", StandInHostBuffer)
    monkeypatch.setattr(comfy.cli_args.args, "disable_pinned_memory", True)
    monkeypatch.setattr(StandInVBAR, "instances", [])
    monkeypatch.setattr(StandInVBAR, "pressure", pressure)
    if cast_streams:
        monkeypatch.setattr(mm, "NUM_STREAMS", 2)
        monkeypatch.setattr(mm, "STREAMS", {CARD: [FakeStream(), FakeStream()]})
        monkeypatch.setattr(mm, "stream_counters", {})
    monkeypatch.setattr(mm, "STREAM_AIMDO_CAST_BUFFERS", {})
    monkeypatch.setattr(mm, "STREAM_CAST_BUFFERS", {})
    monkeypatch.setattr(mm, "LARGEST_AIMDO_CASTED_WEIGHT", (None, 0))
    monkeypatch.setattr(mm, "LARGEST_CASTED_WEIGHT", (None, 0))
    monkeypatch.setattr(comfy.ops, "comfy", _OpsView(comfy, mm))
    # ModelPatcherDynamic.__new__ hands out a plain ModelPatcher for a CPU load device (clone() too):
    # the stand-in load device is a card.
    monkeypatch.setattr(comfy.model_patcher.ModelPatcherDynamic, "__new__", _dynamic_new)
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcherDynamic)  # main.py


def _dynamic_new(cls, *args, **kwargs):
    return object.__new__(cls)


def unet_loader(state_dict: dict, model_options: dict | None = None):
    """A MODEL as UNETLoader makes it in a prompt on a card with DynamicVRAM: loaded under
    inference mode, the parameters the file's tensors in host memory (``assign``). Needs
    ``install``."""
    import comfy.sd

    options = {"load_device": LOAD_DEVICE, "offload_device": HOST, **(model_options or {})}
    with torch.inference_mode():
        host = {k: HostWeight(v, requires_grad=False) if v.is_floating_point() else v for k, v in state_dict.items()}
        return comfy.sd.load_diffusion_model_state_dict(host, model_options=options)


def offload_to_host(patcher):
    """The weights of a non-dynamic MODEL in host memory (where ``--novram`` leaves them)."""
    with torch.inference_mode():
        for module in patcher.model.modules():
            if hasattr(module, "comfy_cast_weights"):
                for name, param in list(module._parameters.items()):
                    if param is not None and type(param) is torch.nn.Parameter:
                        module._parameters[name] = HostWeight(param.data, requires_grad=False)


def evict_all():
    """Every resident page evicted (its bytes now belong to someone else)."""
    return sum(vbar.evict() for vbar in StandInVBAR.instances)
