"""The wgpu device the wgpu executor runs on (one per process), and pipeline caching.

Whatever adapter wgpu finds is used: Mesa's lavapipe ("llvmpipe") on machines without a
GPU, a real Vulkan GPU elsewhere.  The adapter is recorded (``Gpu.adapter_string``) so
results and benchmarks say where they ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import BackendError

_GPU = None


@dataclass
class Gpu:
    adapter: object
    device: object
    limits: dict
    pipelines: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)

    @property
    def info(self) -> dict:
        return dict(self.adapter.info)

    @property
    def adapter_string(self) -> str:
        i = self.info
        return f"{i.get('device', '?')} ({i.get('backend_type', '?')}, {i.get('adapter_type', '?')}, {i.get('description', '')})"

    def pipeline(self, key: str, source: str, entry: str, layout):
        """A compute pipeline, compiled once per (key, entry) in this process."""
        k = (key, entry)
        if k not in self.pipelines:
            import wgpu

            mod = self.pipelines.get((key, "<module>"))
            if mod is None:
                mod = self.device.create_shader_module(code=source)
                self.pipelines[(key, "<module>")] = mod
            self.pipelines[k] = self.device.create_compute_pipeline(
                layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
                compute={"module": mod, "entry_point": entry},
            )
            del wgpu
        return self.pipelines[k]

    def layout(self, key: str, kinds: list[str]):
        """A bind-group layout: kinds are 'read', 'rw' (storage) or 'uniform'."""
        if key not in self.layouts:
            import wgpu

            types = {
                "read": wgpu.BufferBindingType.read_only_storage,
                "rw": wgpu.BufferBindingType.storage,
                "uniform": wgpu.BufferBindingType.uniform,
            }
            self.layouts[key] = self.device.create_bind_group_layout(
                entries=[
                    {
                        "binding": i,
                        "visibility": wgpu.ShaderStage.COMPUTE,
                        "buffer": {"type": types[k]},
                    }
                    for i, k in enumerate(kinds)
                ]
            )
        return self.layouts[key]


def get_gpu() -> Gpu:
    global _GPU
    if _GPU is not None:
        return _GPU
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover - wgpu is a declared dependency
        raise BackendError(
            f"the wgpu backend needs the wgpu package ({e}); pip install wgpu==0.32.0."
        ) from None
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:
        adapter, err = None, e
    else:
        err = None
    if adapter is None:
        raise BackendError(
            f"no wgpu adapter found{f' ({type(err).__name__}: {err})' if err else ''}: "
            "install a Vulkan driver "
            f"(on Debian `apt-get install mesa-vulkan-drivers libvulkan1` gives the lavapipe CPU "
            f"adapter) or use --backend numpy."
        )
    al = adapter.limits
    want = {
        "max-storage-buffer-binding-size": al["max-storage-buffer-binding-size"],
        "max-buffer-size": al["max-buffer-size"],
        "max-storage-buffers-per-shader-stage": min(al["max-storage-buffers-per-shader-stage"], 8),
        "max-compute-workgroup-storage-size": al["max-compute-workgroup-storage-size"],
        "max-compute-invocations-per-workgroup": al["max-compute-invocations-per-workgroup"],
    }
    device = adapter.request_device_sync(required_limits=want)
    _GPU = Gpu(adapter, device, dict(device.limits))
    return _GPU
