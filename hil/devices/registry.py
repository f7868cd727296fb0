"""The registry of device kinds (each kind's module registers itself here)."""

from ..registry import Registry

DEVICES: Registry = Registry("device kind")
