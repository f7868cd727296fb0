// microkernel/trap.c -- leaving QEMU.
//
// Every way out -- `shutdown`, a panic, a CPU exception (isr_common in
// entry.asm prints the `!EXC` line first) -- ends here with an isa-debug-exit
// code the host can read (docs/console.md).  The IDT is built by idt_init,
// also in entry.asm.
#include "kernel.h"

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
