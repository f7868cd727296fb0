// microkernel/trap.c -- the IDT, exception reports and leaving QEMU.
//
// No exception may end in a silent triple fault: vectors 0-31 all lead to
// one `!EXC` line and an isa-debug-exit code the host can read
// (docs/console.md).  Vectors 0x20-0x27 are the remapped PIC's.
#include "kernel.h"

struct gate {           // 64-bit interrupt gate
    u16 off_lo, sel;
    u8 ist, type;
    u16 off_mid;
    u32 off_hi, zero;
};
static struct gate idt[0x28];
extern char isr_sled[], irq_stub[];   // entry.asm

void idt_init(void)
{
    for (int v = 0; v < 0x28; v++) {
        // The kernel lives below 4 GiB, so off_hi stays 0.
        u32 a = (u32)(u64)(v < 32 ? isr_sled + 2 * v : irq_stub);
        idt[v] = (struct gate){a, 0x10, 0, 0x8E, a >> 16, 0, 0};   // 0x10: 64-bit code
    }
    struct __attribute__((packed)) { u16 limit; u64 base; } r = {sizeof idt - 1, (u64)idt};
    asm volatile("lidt %0" : : "m"(r));
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
