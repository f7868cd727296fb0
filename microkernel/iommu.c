// microkernel/iommu.c -- confine device DMA with the Intel VT-d remapping unit.
//
// The broker checks what the GPU asks the CPU to do, but a device the GPU
// programs (NVMe PRPs, NIC descriptors) DMAs wherever it is told.  So every
// endpoint we enumerate gets a context entry pointing at one shared domain
// whose second-level tables map exactly the DMA window and the vGPU's VRAM
// (identity: bus address = guest physical), read/write, and nothing else.  A
// function we did not enumerate has no context entry: all its DMA faults.
//
// Where the unit is: pxOS boots without ACPI, so there is no DMAR table to
// read; QEMU's q35 puts its unit at 0xFED90000 (Q35_HOST_BRIDGE_IOMMU_ADDR).
// We believe it only if VER and CAP answer like a unit we can drive (version
// 1.x, 3- or 4-level second-level tables).  Without one, devices keep
// unconfined bus mastering, as before (docs/microkernel.md, threat model).
//
// Translation is on before pci.c sets any bus-master bit; tables only ever go
// from not-present to present, which needs no invalidation (CAP.CM is 0).
// Queued invalidation and interrupt remapping stay off: MSI-X writes to
// 0xFEExxxxx are not translated, so device interrupts arrive as before.
#include "kernel.h"
#include "vgpu_layout.h"

// The unit's registers through a pointer in a register, not absolute 64-bit
// addresses: 0xFED90000 is no sign-extended imm32, and every access would cost
// a movabs (measured: ~150 bytes).
volatile u8 *iommu_unit = (void *)0xFED90000;    // not static: so GCC cannot fold it back
#define R32(off) (*(volatile u32 *)(iommu_unit + (off)))
#define R64(off) (*(volatile u64 *)(iommu_unit + (off)))
#define FAULT_VECTOR 0x29   // irq_stub (entry.asm) sends the EOI; the idle loop polls us

static u64 pool[12][512] __attribute__((aligned(4096)));   // root, context and SL tables
static u32 used, levels;    // levels: 0 = no unit
static u64 *root, *sl;

static u64 *alloc(void) { return used < 12 ? pool[used++] : 0; }

// GCMD bits are commands, GSTS bits the state: set one, keep the others on.
static void command(u32 bit)
{
    R32(0x18) = R32(0x1C) | bit;
    while (!(R32(0x1C) & bit))
        ;
}

void iommu_init(void)
{
    u64 cap = R64(0x08);
    u32 sagaw = cap >> 8 & 0x1F;
    if ((R32(0x00) & 0xF0) != 0x10 || !(sagaw & 6) || R32(0x1C))
        return;     // not a VT-d 1.x unit we drive, or someone enabled it already
    levels = sagaw & 2 ? 3 : 4;     // 39-bit (QEMU's default aw-bits) or 48-bit
    root = alloc();
    sl = alloc();
    R64(0x20) = (u64)root;              // RTADDR: legacy root table
    command(1u << 30);                  // SRTP
    R64(0x28) = 1UL << 63 | 1UL << 61;  // CCMD: global context-cache invalidation
    while (R64(0x28) >> 63)
        ;
    u32 iotlb = (R32(0x10) >> 8 & 0x3FF) * 16 + 8;   // ECAP.IRO
    R64(iotlb) = 1UL << 63 | 1UL << 60;     // global IOTLB invalidation
    while (R64(iotlb) >> 63)
        ;
    R32(0x3C) = FAULT_VECTOR;           // fault event: FEDATA, FEADDR (APIC ID 0), unmask
    R32(0x40) = 0xFEE00000;
    R32(0x38) = 0;
    command(1u << 31);                  // TE: from here an unmapped DMA faults
    iommu_map(VG_DMA_BASE, VG_DMA_SIZE);
    kprintf("iommu ver=%1 cap=%1\n", (u64)R32(0), cap);    // CAP.SAGAW says the levels
}

// Identity-map [a, a + size), read/write.  Callers pass naturally aligned
// powers of two (a BAR) or the 2 MiB-aligned DMA window, so 2 MiB pages fit
// any range of 2 MiB or more and 4 KiB pages the rest.  When the pool runs out
// the rest stays unmapped: less DMA, never more.
void iommu_map(u64 a, u64 size)
{
    u64 page = size >> 21 ? 1UL << 21 : 1UL << 12;
    for (u64 end = a + size; levels && a < end; a += page) {
        u64 *t = sl;
        for (u32 shift = 3 + 9 * levels;; shift -= 9) {
            u64 *e = &t[a >> shift & 511];
            if (1UL << shift == page) {
                *e = a | 3 | (page >> 21) << 7;     // R, W; bit 7: a 2 MiB page
                break;
            }
            if (!*e) {
                u64 *n = alloc();
                if (!n)
                    return;
                *e = (u64)n | 3;
            }
            t = (u64 *)(*e & ~0xFFFUL);
        }
    }
}

// Give function bdf (bus << 8 | devfn) the shared domain (ID 1).
void iommu_device(u32 bdf)
{
    if (!levels)
        return;
    u64 *re = &root[bdf >> 8 << 1];     // 16-byte root entry of its bus
    if (!*re) {
        u64 *ct = alloc();
        if (!ct)
            return;                     // no context table: that bus gets no DMA
        *re = (u64)ct | 1;
    }
    u64 *ce = (u64 *)(*re & ~0xFFFUL) + (bdf & 0xFF) * 2;
    ce[1] = levels - 2 | 1 << 8;        // AW (1: 39-bit, 2: 48-bit), domain 1
    ce[0] = (u64)sl | 1;                // present, translation type 0 (SL tables)
}

// After every wake-up: each recorded fault becomes a `!DMAR` line and an event
// for the GPU, the faulting function loses bus mastering, the record and the
// overflow flag are cleared.  QEMU has one record (CAP.NFR 0) and collapses a
// device's faults while its record is pending, so we clear promptly.
void iommu_poll(void)
{
    if (!levels || !(R32(0x34) & 3))    // FSTS: PFO, PPF
        return;
    u64 cap = R64(0x08), rec = (cap >> 24 & 0x3FF) * 16;   // CAP.FRO: the first record
    for (u32 n = (cap >> 40 & 0xFF) + 1; n--; rec += 16) {      // CAP.NFR + 1 records
        u64 hi = R64(rec + 8);
        if (!(hi >> 63))
            continue;
        u32 bdf = (u16)hi;
        kprintf("!DMAR dev=%2:%2.%1 addr=%1 reason=%2 %s\n", (u64)bdf >> 8, (u64)bdf >> 3 & 31,
                (u64)bdf & 7, R64(rec), hi >> 32 & 0xFF, hi >> 62 & 1 ? "read" : "write");
        pci_stop(bdf);
        vgpu_event(VG_SRC_DMAR, hi & ~(1UL << 63));
        R32(rec + 12) = 1u << 31;       // F is write-1-to-clear
    }
    R32(0x34) = 1;                      // PFO, also write-1-to-clear
}
