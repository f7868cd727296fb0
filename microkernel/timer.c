// microkernel/timer.c -- the 8259 PIC, the idle hlt and TSC calibration (8254 PIT).
#include "kernel.h"

u64 halted;     // TSC ticks spent inside hlt (the `stats` command)

// Out of line: six callers, and rdtsc's EDX:EAX needs stitching.
u64 rdtsc(void)
{
    u64 t;
    asm volatile("rdtsc; shl $32, %%rdx; or %%rdx, %%rax" : "=a"(t) : : "rdx");
    return t;
}

// Remap the master PIC to vectors 0x20-0x27, clear of the CPU exceptions,
// and let through only IRQ0 (PIT) and IRQ4 (COM1).  Auto-EOI mode: the CPU
// acknowledges by taking the interrupt, so the handler is a bare iretq.  The
// slave is left alone: IRQ2 (the cascade) stays masked.
void pic_init(void)
{
    outb(0x20, 0x11);       // ICW1: edge triggered, cascade, ICW4 follows
    outb(0x21, 0x20);       // ICW2: vector base 0x20
    outb(0x21, 0x04);       // ICW3: a slave on IRQ2 (KVM's PIC insists on ICW3)
    outb(0x21, 0x03);       // ICW4: 8086 mode, auto-EOI
    outb(0x21, (u8)~0x11);  // OCW1: mask all but IRQ0 and IRQ4
    // The PIC reaches the CPU through the local APIC's LINT0 ("virtual
    // wire").  SeaBIOS sets that up, qboot does not: enable the APIC (SVR bit
    // 8; APIC spurious interrupts go to vector 0x27, a bare iretq) and make
    // LINT0 ExtINT.  The APIC stays on for MSI later.
    *(volatile u32 *)0xFEE000F0 = 0x127;
    *(volatile u32 *)0xFEE00350 = 0x700;
}

// Sleep until the next interrupt and account the time as halted.  The
// caller runs with interrupts off: `sti; hlt` lets an interrupt in only once
// the CPU halts, so a byte that arrived while we were busy still wakes us.
u64 idle(void)
{
#if PXOS_SPIN_IDLE
    // The CPU-idle metric's negative control (scenario `image: {spin_idle: true}`):
    // wait with interrupts open but without halting, so the vCPU never idles.  A
    // short spin then return, as a spurious wake-up would: every caller loops.
    asm volatile("sti");
    for (int i = 0; i < 256; i++)
        asm volatile("pause");
    asm volatile("cli");
    return rdtsc();  // nothing is accounted as halted: the CPU was busy
#endif
    u64 t = rdtsc();
    asm volatile("sti; hlt; cli");
    u64 now = rdtsc();
    halted += now - t;
    return now;
}

// TSC frequency in kHz: one-shot PIT channel 0 for PIT_COUNT ticks of its
// 1.193182 MHz clock (~10 ms) while we sleep; IRQ0 wakes us at the end.
// Other interrupts may wake us earlier, so the PIT's own OUT pin (read-back
// status, bit 7) says when the count really ran out.
#define PIT_HZ 1193182
#define PIT_COUNT 11932
u64 tsc_khz(void)
{
    outb(0x43, 0x30);       // channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count)
    outb(0x40, PIT_COUNT & 0xFF);
    outb(0x40, PIT_COUNT >> 8);
    u64 t0 = rdtsc(), t1;
    do {
        t1 = idle();
        outb(0x43, 0xE2);   // read-back: latch channel 0's status
    } while (!(inb(0x40) & 0x80));
    return (t1 - t0) * PIT_HZ / (PIT_COUNT * 1000UL);
}
