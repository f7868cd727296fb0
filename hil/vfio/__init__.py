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

from .bdf import Bdf, parse_bdf, qemu_args
from .bind import Binder, BindError, RestoreError
from .checks import NOIOMMU_KEY, Preflight, Problem, run_command
from .doctor import doctor_report
from .host import Bar, PciHost, parse_resource
from .passthrough import DeviceBusy, Passthrough, restore_stale
from .state import DEFAULT_REGISTRY, Owner, Processes, Record, Registry, StateError
from .sysfs import Sysfs

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
