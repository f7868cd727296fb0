// microkernel/trap.c -- exception reports and leaving QEMU.
//
// No exception may end in a silent triple fault: vectors 0-31 all lead to
// one `!EXC` line and an isa-debug-exit code the host can read
// (docs/console.md).  The IDT itself is built by idt_init (entry.asm).
#include "kernel.h"

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
