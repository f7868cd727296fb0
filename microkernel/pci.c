// microkernel/pci.c -- find every PCI function, size and place its BARs, print it.
//
// Config space: ECAM on q35 (memory-mapped, 4 KiB per function), the legacy
// 0xCF8/0xCFC ports on pc (i440fx).  We walk bus 0 and follow PCI-PCI
// bridges instead of probing all 256 buses: every config access is a VM exit.
//
// SeaBIOS assigns BARs and bridge windows; qboot (the PVH path) assigns
// nothing.  So a BAR that reads 0 gets an address from a bump allocator in the
// 32-bit PCI hole, and a bridge gets windows around what we placed behind it.
// Either way every function ends with memory + I/O decode and bus mastering
// on (later drivers DMA), and the first VG_MAX_FUNCS are listed in the boot
// info the GPU's program reads.
#include "kernel.h"
#include "vgpu_layout.h"

#define IVSHMEM 0x11101AF4  // 1af4:1110: QEMU's ivshmem, the vGPU when a bridge answers

static u32 ecam;    // ECAM base (below 4 GiB); 0 = legacy ports
static u32 cur;     // the function we are looking at: bus << 8 | device << 3 | function
static u32 old;     // what probe() found in the register before sizing it
// Next free BAR address: [0] memory, above q35's ECAM window (0xB0000000,
// 256 MiB) and below the IOAPIC (0xFEC00000); [1] I/O ports, up to 0xFFFF.
static u32 next[2] = {0xC0000000, 0xC000};

// Address of config register `off` of `cur` in ECAM, or 0 after pointing the
// legacy window (0xCFC) at it.
static volatile u32 *reg(u32 off)
{
    if (ecam)
        return (volatile u32 *)(u64)(ecam + (cur << 12) + off);
    outl(0xCF8, 0x80000000 | cur << 8 | off);   // device lands in bits 15:11
    return 0;
}

static u32 cfg(u32 off)
{
    volatile u32 *r = reg(off);
    return r ? *r : inl(0xCFC);
}

static void cfg_set(u32 off, u32 v)
{
    volatile u32 *r = reg(off);
    if (r)
        *r = v;
    else
        outl(0xCFC, v);
}

// BAR sizing: write all-ones, read back what sticks, put the old value back.
static u32 probe(u32 off)
{
    old = cfg(off);
    cfg_set(off, ~0);
    u32 r = cfg(off);
    cfg_set(off, old);
    return r;
}

static u64 align(u64 a, u64 n) { return (a + n - 1) & -n; }

// Bridge windows have 1 MiB (memory) and 4 KiB (I/O) granularity.
static void align_windows(void)
{
    next[0] = (next[0] + 0xFFFFF) & ~0xFFFFF;
    next[1] = (next[1] + 0xFFF) & ~0xFFF;
}

// cls: config register 8 (class code << 8 | revision), read once per function.
static void ident(const char *tag, u32 id, u32 cls)
{
    kprintf("%s %2:%2.%1 %4:%4 %6", tag, (u64)cur >> 8, (u64)cur >> 3 & 31, (u64)cur & 7,
            (u64)id & 0xFFFF, (u64)id >> 16, (u64)cls >> 8);
}

static void scan_bus(u32 bus);

// Behind a bridge.  Both firmwares we boot from number the buses (qboot
// too), but only SeaBIOS opens the bridge windows.  So if we placed BARs
// behind a bridge, open its windows over exactly that space: memory in 1 MiB,
// I/O in 4 KiB units; prefetchable BARs share the plain memory window, the
// prefetchable one stays shut.  An unnumbered bridge (secondary bus 0) is
// skipped rather than scanned as bus 0 again.
static void bridge(void)
{
    u32 me = cur, bus = cfg(0x18) >> 8 & 0xFF;
    if (!bus)
        return;
    align_windows();
    u32 m0 = next[0], i0 = next[1];
    scan_bus(bus);
    align_windows();
    u32 m1 = next[0], i1 = next[1];
    cur = me;
    if (m1 != m0 || i1 != i0) {
        cfg_set(0x1C, i0 >> 8 | ((i1 - 1) & 0xF000));         // I/O base/limit
        cfg_set(0x20, m0 >> 16 | ((m1 - 1) & 0xFFF00000));    // memory base/limit
        cfg_set(0x24, 0xFFF0);                                // prefetchable: shut
    }
}

// MSI-X entry 0 -> the boot CPU's local APIC, IDT vector `vector`; then enable
// MSI-X.  The table lives in the BAR its capability names: BIR 6 and 7 are
// reserved, and the 16-byte entry must lie inside that BAR and below 4 GiB
// (the identity map) -- a device's word is checked like the GPU's.  Called
// only when every BAR got an address.
static void msix(struct vg_func *f, u32 vector)
{
    for (u32 p = cfg(0x34), c; (p &= 0xFC); p = c >> 8)
        if ((u8)(c = cfg(p)) == 0x11) {
            u32 t = cfg(p + 4), i = t & 7;      // table offset | BAR index
            u64 b = f->bar[i], off = t & ~7;
            if (i > 5 || off + 16 > f->size[i] || (b + off + 15) >> 32)
                return;
            volatile u32 *e = (void *)(b + off);
            e[0] = 0xFEE00000;                  // message address: APIC ID 0
            e[1] = 0;
            e[2] = vector;                      // message data: fixed delivery, this vector
            e[3] = 0;                           // unmasked
            cfg_set(p, 1u << 31);               // message control: enable, function unmasked
            f->irq = vector;
            return;
        }
}

// One function: its `pci` line with every BAR (placing unassigned ones), and
// a `gpu` line for display controllers (class 03).  Every BAR goes to the
// privilege broker's list -- except the vGPU's own.  id: vendor and device
// ID (config 0); type: header type 0 or 1.
static void function(u32 id, u32 type)
{
    u32 cmd = cfg(4), on = 7;       // on: I/O + memory decode, bus master
    // Its entry in the boot info the GPU gets (docs/drivers.md); past the
    // table's end, a scratch entry nobody sees.
    static struct vg_func spare;
    u32 k = boot.nfunc;
    struct vg_func *f = &spare;
    if (k < VG_MAX_FUNCS)
        f = &boot.func[boot.nfunc++];
    f->bdf = cur;
    f->id = id;
    u32 cls = f->classcode = cfg(8);
    cfg_set(4, cmd & ~3);           // decode off while BARs hold all-ones
    ident("pci", id, cls);
    for (u32 off = 0x10; off < (type ? 0x18 : 0x28); off += 4) {   // a bridge has two BARs
        u64 size = probe(off), lo = old;
        u32 io = lo & 1, wide = (lo & 7) == 4;      // wide: 64-bit memory BAR
        size &= io ? ~3 : ~15;
        u64 base = lo & (io ? ~3 : ~15);
        if (wide) {
            size |= (u64)probe(off + 4) << 32;
            base |= (u64)old << 32;
        }
        size &= -size;              // the lowest bit that stuck is the size
        if (size) {                 // implemented
            if (!base) {            // unassigned: place it (a 64-bit BAR's high half stays 0)
                base = align(next[io], size);
                if (base + size > (io ? 0x10000 : 0xFEC00000)) {
                    on = base = 0;  // no room: leave it, and decoding, off
                } else {
                    next[io] = base + size;
                    cfg_set(off, base);
                }
            }
            kprintf(" bar%1=%s%s:%1/%1", (u64)(off - 0x10) / 4, io ? "io" : wide ? "m64" : "m32",
                    (lo & 9) == 8 ? "p" : "", base, size);
            if (id != IVSHMEM)
                broker_allow(base, size, io);
        }
        f->bar[(off - 0x10) / 4] = base;
        f->size[(off - 0x10) / 4] = size;
        off += 4 * wide;
    }
    if (!type)
        iommu_device(cur);          // its DMA is confined before it may master the bus
    cfg_set(4, cmd | on);
    kputc('\n');
    // The vGPU's interrupt wakes the broker; another device's becomes an event
    // for the GPU (source IRQ, data = its index in the boot info).
    if (on && k < VG_MAX_FUNCS)
        msix(f, id == IVSHMEM ? VG_IRQ_VECTOR : VG_DEV_VECTOR + k);
    if (id == IVSHMEM && on)
        vgpu_attach(f->bar[0], f->bar[2], f->size[2]);
    if (cls >> 24 == 3) {
        ident("gpu", id, cls);
        kputc('\n');
    }
    if (type == 1)
        bridge();
}

static void scan_bus(u32 bus)
{
    u32 bdf = bus << 8;
    do {
        cur = bdf;
        u32 hdr = 0, id = cfg(0);           // absent: treated as single-function
        if ((u16)id != 0xFFFF)              // vendor ID: is anybody there?
            function(id, (hdr = cfg(0x0C) >> 16) & 0x7F);   // header type; bit 7: multi-function
        if (!(bdf & 7) && !(hdr & 0x80))
            bdf += 7;                       // no function 0, or single-function: skip 1-7
    } while (++bdf & 0xFF);                 // until device 31, function 7
}

// Bus mastering off: a device whose DMA the IOMMU blocked (iommu.c).
void pci_stop(u32 bdf)
{
    cur = bdf;
    cfg_set(4, cfg(4) & ~4);
}

void pci_scan(void)
{
    // 8086:29c0 is q35's host bridge.  Its PCIEXBAR (config 0x60) turns the
    // ECAM window on; SeaBIOS sets it to 0xB0000000, qboot leaves it off.
    if (cfg(0) == 0x29C08086) {
        u32 bar = cfg(0x60);
        if (!(bar & 1))
            cfg_set(0x60, bar = 0xB0000001);
        ecam = bar & 0xF0000000;
    }
    scan_bus(0);
}
