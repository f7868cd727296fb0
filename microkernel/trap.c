// microkernel/trap.c -- the IDT, exception reports and leaving QEMU.
//
// No exception may end in a silent triple fault: vectors 0-31 all lead to
// one `!EXC` line and an isa-debug-exit code the host can read
// (docs/console.md).  Vectors 0x20-0x27 are the remapped PIC's.
#include "kernel.h"

// 64-bit interrupt gates, 16 bytes each.  The kernel lives below 4 GiB, so
// the upper 8 bytes (offset bits 63:32, reserved) stay 0.
static u32 idt[0x29][4];   // exceptions, PIC 0x20-0x27, MSI-X 0x28 (vgpu_layout.h)
static const struct __attribute__((packed)) {
    u16 limit;
    void *base;
} idtr = {sizeof idt - 1, idt};
extern char isr_sled[], irq_stub[];   // entry.asm

void idt_init(void)
{
    for (int v = 0; v < 0x29; v++) {
        u32 a = (u32)(u64)(v < 32 ? isr_sled + 2 * v : irq_stub);
        idt[v][0] = 0x10 << 16 | (a & 0xFFFF);      // selector 0x10 (64-bit code), offset 15:0
        idt[v][1] = (a & 0xFFFF0000) | 0x8E00;      // offset 31:16, present, DPL 0, interrupt gate
    }
    asm volatile("lidt %0" : : "m"(idtr));
}

// Called by isr_common (entry.asm) on the faulting stack; never returns.
_Noreturn void exception(u64 vec, u64 err, u64 rip, u64 cr2)
{
    kprintf("!EXC vec=%1 err=%1 rip=%1 cr2=%1\n", vec, err, rip, cr2);
    qexit(0x20 + vec);
}

// Exit QEMU through isa-debug-exit (status = code << 1 | 1).  Wait until the
// UART has handed every byte to QEMU (LSR.TEMT) first, or the last line
// could die with the VM.  Without the device, just stop.
_Noreturn void qexit(u8 code)
{
    while (!(inb(COM1 + 5) & 0x40))
        ;
    outb(0xF4, code);
    for (;;)
        asm volatile("cli; hlt");
}
