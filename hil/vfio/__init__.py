"""VFIO passthrough, host side: hand a real PCI function to the guest and always give it back.

There is no `pyvfio` package (nothing of that name on PyPI or GitHub), so hil has this
small layer over sysfs; docs/passthrough.md is the user's guide.  Every kernel file is
reached through one :class:`Sysfs` root, so the layer is tested against a fake tree.

The interface the rest of hil uses:

- :func:`parse_bdf` / :class:`Bdf`: a validated PCI address (UserError otherwise);
- :func:`qemu_args`: ``-device vfio-pci,host=...`` built from validated values only;
- :class:`Passthrough`: ``with Passthrough(bdfs, run_dir=...) as p:`` preflight,
  state files, bind; restore on the way out, whatever the way out;
- :func:`restore_stale`: restore what a killed hil left bound (at start, `hil vfio restore`);
- :func:`doctor_report`: IOMMU groups and what is bindable, for `hil doctor`;
- :meth:`PciHost.function` / :meth:`PciHost.bars`: IDs, class and BARs as the host sees
  them, to compare with what the guest enumerates.
"""

import importlib

# Loaded when first used: every `hil run` asks restore_stale() at start, and a host that
# never passed a device through should not pay for importing the whole layer.
_WHERE = {
    "Bar": "host",
    "Bdf": "bdf",
    "BindError": "bind",
    "Binder": "bind",
    "DEFAULT_REGISTRY": "state",
    "DeviceBusy": "passthrough",
    "NOIOMMU_KEY": "checks",
    "Owner": "state",
    "Passthrough": "passthrough",
    "PciHost": "host",
    "Preflight": "checks",
    "Problem": "checks",
    "Processes": "state",
    "Record": "state",
    "Registry": "state",
    "RestoreError": "bind",
    "StateError": "state",
    "Sysfs": "sysfs",
    "doctor_report": "doctor",
    "parse_bdf": "bdf",
    "parse_resource": "host",
    "qemu_args": "bdf",
    "restore_stale": "passthrough",
    "run_command": "checks",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"hil.vfio.{_WHERE[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "DEFAULT_REGISTRY",
    "NOIOMMU_KEY",
    "Bar",
    "Bdf",
    "BindError",
    "Binder",
    "DeviceBusy",
    "Owner",
    "Passthrough",
    "PciHost",
    "Preflight",
    "Problem",
    "Processes",
    "Record",
    "Registry",
    "RestoreError",
    "StateError",
    "Sysfs",
    "doctor_report",
    "parse_bdf",
    "parse_resource",
    "qemu_args",
    "restore_stale",
    "run_command",
]
