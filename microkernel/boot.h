// microkernel/boot.h -- what the two boot paths hand the kernel.
#pragma once
#include "kernel.h"

// BIOS path: the hand-off block the boot sector leaves at 0x7DD0 (inside its
// own 512 bytes, which stay in memory).  Layout: docs/image.md; the boot
// sector (boot/boot.asm) and hil/image.py fill it in.
struct handoff {
    u32 magic;          // "pxHO"
    u16 sectors;        // sectors the boot sector loaded after itself
    u16 version;        // 1
    u32 payload_addr;   // 0: no payload
    u32 payload_size;
    u64 tsc_boot;       // TSC at the boot sector's first instruction
    u64 tsc_lmode;      // TSC once the boot sector reached long mode
};
#define HANDOFF ((volatile struct handoff *)0x7DD0)

// PVH path: the loader's hvm_start_info (Xen's arch-x86/hvm/start_info.h),
// only the fields we read.  Module 0 is QEMU's -initrd, our payload.
struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr;
};
struct hvm_modlist_entry {
    u64 paddr, size, cmdline_paddr, reserved;
};
