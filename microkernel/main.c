// microkernel/main.c -- boot order, stage markers, and the command loop.
#include "boot.h"
#include "version.h"
#include "vgpu_layout.h"

static u64 t_kernel;    // TSC at the first C instruction: `stats` counts from here

// tsc 0: now.
static __attribute__((noinline)) void stage(const char *name, u64 tsc)
{
    kprintf("@stage %s tsc=%1\n", name, tsc ? tsc : rdtsc());
}

static int eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

// A checksum of what a stray DMA must never change: the loaded image (code,
// read-only data, data) and the PVH page tables.  The CPU sets accessed and
// dirty bits (5, 6) in page-table entries as it goes: bits 5 and 6 of every
// byte are left out.  Byte by byte: .bss need not end 8-byte aligned.
extern u8 __bss_start[], __pgtables[], __end[];
static u64 ksum(void)
{
    u64 s = 0;
    for (u8 *p = (u8 *)0x100000; p < __end; p++)
        if (p < __bss_start || p >= __pgtables)
            s = s * 31 + (*p & ~0x60);
    return s;
}

static void stats(void)
{
    u64 busy = rdtsc() - t_kernel - halted;
    kprintf("stats busy=%1 halt=%1 wakes=%1 reqs=%1 sum=%1\n", busy, halted, wakes, served,
            ksum());
}

static void command(const char *line)
{
    const char *c = "stats\0shutdown\0ud\0pf";   // docs/console.md: commands 0-3
    u32 i = 0;
    while (!eq(line, c)) {
        if (++i == 4) {
            kprintf("? %s\n", line);
            return;
        }
        while (*c++)            // on to the next name
            ;
    }
    if (i < 2)                  // stats, shutdown
        stats();
    if (i == 1) {
        kputs("bye\n");
        qexit(0);
    }
    if (i == 2)
        asm volatile("ud2");
    if (i == 3)
        (void)*(volatile u8 *)(1UL << 32);  // first byte above the 4 GiB identity map
}

// si: PVH start_info, or NULL on the BIOS path.  tsc_lmode: PVH only.
_Noreturn void kmain(struct hvm_start_info *si, u64 tsc_lmode)
{
    t_kernel = rdtsc();
#if PXOS_BOOT_MARKERS
    outb(COM1, 'Z');        // benchmarks/boot_breakdown.py: long mode and C reached
#endif
    serial_init();
    idt_init();
    kprintf("pxOS microkernel " PXOS_VERSION " %s\n", si ? "pvh" : "bios");
    u64 addr, size;
    if (si) {
        stage("lmode", tsc_lmode);
        struct hvm_modlist_entry *m = (void *)si->modlist_paddr;
        addr = si->nr_modules ? m->paddr : 0;
        size = si->nr_modules ? m->size : 0;
    } else {
        stage("boot", HANDOFF->tsc_boot);
        stage("lmode", HANDOFF->tsc_lmode);
        addr = HANDOFF->payload_addr;
        size = HANDOFF->payload_size;
    }
    if (size)
        kprintf("@payload addr=%1 size=%1\n", addr, size);
    stage("kernel", t_kernel);
#if PXOS_BOOT_FAULT
    asm volatile("ud2");    // image option: prove exception reporting at boot
#endif
    iommu_init();           // before pci_scan turns bus mastering on
    pci_scan();
    stage("pci", 0);
    pic_init();
#if PXOS_BOOT_DELAY_MS
    // Image option boot_delay_ms (tests/integration/test_nightly_confirm.py): a planted
    // boot regression, timed by the PIT (~10 ms per tsc_khz() call), not by CPU speed.
    for (u32 i = 0; i < PXOS_BOOT_DELAY_MS / 10; i++)
        tsc_khz();
#endif
    stage("ready", 0);
    kprintf("@tsc khz=%1\n", tsc_khz());
    vgpu_start((void *)addr, size);     // the payload is the GPU's program (docs/vgpu.md)

    // Idle loop: interrupts stay off except inside idle()'s `sti; hlt`.
    char line[32];
    u32 n = 0;
    for (;;) {
        // The UART only after its interrupt (or at the start: .bss says 0).  It
        // keeps its line raised while bytes wait, so once we have read them all
        // the next byte raises it again, and that interrupt ends the next hlt.
        u8 rx = !com1_quiet;
        com1_quiet = 1;
        while (rx && inb(COM1 + 5) & 1) {   // LSR.DR: a byte is waiting
            char c = inb(COM1);
            vgpu_event(VG_SRC_COM1_RX, (u8)c);
            if (c == '\r' || c == '\n') {
                if (n) {
                    line[n] = 0;
                    command(line);
                    n = 0;
                }
            } else if (n < sizeof line - 1)
                line[n++] = c;
        }
        iommu_poll();
        vgpu_poll();
        idle();
        wakes++;
    }
}
