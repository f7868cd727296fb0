// microkernel/pci.c -- find every PCI function, size and place its BARs, print it.
//
// Config space: ECAM on q35 (memory-mapped, 4 KiB per function), the legacy
// 0xCF8/0xCFC ports on pc (i440fx).  We walk bus 0 and follow PCI-PCI
// bridges instead of probing all 256 buses: every config access is a VM exit.
//
// SeaBIOS assigns BARs and bridge windows; qboot (the PVH path) assigns
// nothing.  So a BAR that reads 0 gets an address from a bump allocator in the
// 32-bit PCI hole, and a bridge gets windows around what we placed behind it.  Either way every function ends with
// memory + I/O decode and bus mastering on (later drivers DMA).
#include "kernel.h"

static u64 ecam;            // ECAM base; 0 = legacy ports
// Next free address and end of each BAR window: [0] memory, [1] I/O.
// Memory: above the q35 ECAM window (0xB0000000, 256 MiB), below the IOAPIC.
static u64 next[2] = {0xC0000000, 0xC000};
static const u64 end[2] = {0xFEC00000, 0x10000};

// bdf = bus << 8 | device << 3 | function
static u32 cfg(u32 bdf, u32 off)
{
    if (ecam)
        return *(volatile u32 *)(ecam + (bdf << 12) + off);
    outl(0xCF8, 0x80000000 | bdf << 8 | off);   // device lands in bits 15:11
    return inl(0xCFC);
}

static void cfg_set(u32 bdf, u32 off, u32 v)
{
    if (ecam)
        *(volatile u32 *)(ecam + (bdf << 12) + off) = v;
    else {
        outl(0xCF8, 0x80000000 | bdf << 8 | off);
        outl(0xCFC, v);
    }
}

static u64 align(u64 a, u64 n) { return (a + n - 1) & -n; }

static void scan_bus(u32 bus);

// Behind a bridge.  Both firmwares we boot from number the buses (qboot
// too), but only SeaBIOS opens the bridge windows.  So if we placed BARs
// behind a bridge, open its windows over exactly that space: memory in 1 MiB,
// I/O in 4 KiB units; prefetchable BARs share the plain memory window, the
// prefetchable one stays shut.  An unnumbered bridge (secondary bus 0) is
// skipped rather than scanned as bus 0 again.
static void bridge(u64 bdf)
{
    u32 bus = cfg(bdf, 0x18) >> 8 & 0xFF;
    if (!bus)
        return;
    u64 m0 = next[0] = align(next[0], 1 << 20), i0 = next[1] = align(next[1], 1 << 12);
    scan_bus(bus);
    u64 m1 = next[0] = align(next[0], 1 << 20), i1 = next[1] = align(next[1], 1 << 12);
    if (m1 != m0 || i1 != i0) {
        cfg_set(bdf, 0x1C, i0 >> 8 | ((i1 - 1) & 0xF000));         // I/O base/limit
        cfg_set(bdf, 0x20, m0 >> 16 | ((m1 - 1) & 0xFFF00000));    // memory base/limit
        cfg_set(bdf, 0x24, 0xFFF0);                                // prefetchable: shut
    }
}

static void function(u64 bdf, u64 id, u32 type)
{
    u64 cls = cfg(bdf, 8) >> 8;
    u32 cmd = cfg(bdf, 4);
    cfg_set(bdf, 4, cmd & ~3);      // decode off while BARs hold all-ones
    kprintf("pci %2:%2.%1 %4:%4 %6", bdf >> 8, bdf >> 3 & 31, bdf & 7, id & 0xFFFF, id >> 16, cls);
    int ok = 1;
    for (u64 n = 0; n < (type ? 2 : 6); n++) {      // a bridge (type 1) has two BARs
        u32 off = 0x10 + 4 * n, lo = cfg(bdf, off);
        int io = lo & 1, wide = (lo & 7) == 4;      // wide: 64-bit memory BAR
        // Size: write all-ones, read back; the lowest writable address bit is the size.
        cfg_set(bdf, off, ~0);
        u64 size = cfg(bdf, off) & (io ? ~3 : ~15), base = lo & (io ? ~3 : ~15);
        cfg_set(bdf, off, lo);
        if (wide) {
            u32 hi = cfg(bdf, off + 4);
            cfg_set(bdf, off + 4, ~0);
            size |= (u64)cfg(bdf, off + 4) << 32;
            cfg_set(bdf, off + 4, hi);
            base |= (u64)hi << 32;
        }
        size &= -size;
        if (!size)
            continue;                               // unimplemented BAR
        if (!base) {                                // unassigned: place it
            base = align(next[io], size);
            if (base + size > end[io]) {
                ok = base = 0;                      // no room: leave it off
            } else {
                next[io] = base + size;
                cfg_set(bdf, off, base);            // a 64-bit BAR's high half stays 0
            }
        }
        kprintf(" bar%1=%s%s:%1/%1", n, io ? "io" : wide ? "m64" : "m32",
                !io && lo & 8 ? "p" : "", base, size);
        n += wide;
    }
    cfg_set(bdf, 4, ok ? cmd | 7 : cmd);            // I/O + memory decode, bus master
    kputc('\n');
    if (cls >> 16 == 3)                             // display controller: a GPU candidate
        kprintf("gpu %2:%2.%1 %4:%4 %6\n", bdf >> 8, bdf >> 3 & 31, bdf & 7, id & 0xFFFF,
                id >> 16, cls);
    if (type == 1)
        bridge(bdf);
}

static void scan_bus(u32 bus)
{
    for (u64 bdf = bus << 8; bdf < (bus + 1) << 8; bdf++) {
        u32 id = cfg(bdf, 0);
        u32 hdr = cfg(bdf, 0x0C) >> 16 & 0xFF;      // header type; bit 7: multi-function
        if ((u16)id != 0xFFFF)
            function(bdf, id, hdr & 0x7F);
        if (!(bdf & 7) && ((u16)id == 0xFFFF || !(hdr & 0x80)))
            bdf += 7;                               // no function 0, or single-function
    }
}

void pci_scan(void)
{
    // 8086:29c0 is q35's host bridge.  Its PCIEXBAR (config 0x60) turns the
    // ECAM window on; SeaBIOS sets it to 0xB0000000, qboot leaves it off.
    if (cfg(0, 0) == 0x29C08086) {
        u32 bar = cfg(0, 0x60);
        if (!(bar & 1))
            cfg_set(0, 0x60, bar = 0xB0000001);
        ecam = bar & 0xF0000000;
    }
    scan_bus(0);
}
