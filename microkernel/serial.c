// microkernel/serial.c -- COM1 (16550): the kernel's only voice, and printf.
//
// Every line the host sees (docs/console.md) goes through kputc.  Numbers are
// printed in hex only: that is all the console contract asks for, and a
// decimal printer would cost bytes we do not have.
#include "kernel.h"

// (register, value) pairs, written in order.
static const u8 uart_init[] = {
    3, 0x80,    // LCR: DLAB=1 exposes the divisor latch
    0, 1,       // divisor 1 = 115200 baud (moot under QEMU)
    1, 0,
    3, 0x03,    // LCR: 8N1, DLAB=0
    2, 0x07,    // FCR: enable and clear both FIFOs, RX interrupt at 1 byte
    4, 0x0B,    // MCR: DTR | RTS | OUT2 (OUT2 connects the IRQ line)
    1, 0x01,    // IER: interrupt when a byte arrives (wakes the idle hlt)
};

void serial_init(void)
{
    for (const u8 *p = uart_init; p < uart_init + sizeof uart_init; p += 2)
        outb(COM1 + p[0], p[1]);
}

// Polling the line status register before every byte would double the port
// accesses (each one a VM exit).  Instead wait for THRE (transmit FIFO empty)
// only once every 16 bytes, the FIFO's depth.  Waiting at all matters: if
// the host reads slowly, QEMU holds bytes in the FIFO and drops the oldest
// when it overflows.
void kputc(char c)
{
    static u8 room;
    if (!room) {
        while (!(inb(COM1 + 5) & 0x20))
            ;
        room = 16;
    }
    room--;
    outb(COM1, c);
}

void kputs(const char *s)
{
    while (*s)
        kputc(*s++);
}

// Hex, at least `width` digits (width 1: no leading zeros): the higher
// digits first, by recursion (at most 16 deep).
static void hex(u64 v, int width)
{
    if (v >> 4 || width > 1)
        hex(v >> 4, width - 1);
    u8 d = v & 15;
    kputc(d + (d < 10 ? '0' : 'a' - 10));
}

// The printf of this kernel: "%s" is a string, "%N" (N a digit) a number in
// hex with at least N digits; "%1" is the plain number of console.md.  Every
// argument is a u64 (or a pointer): kprintf (entry.asm) lines them up as an
// array and calls this.
void vprint(const char *f, const u64 *arg)
{
    for (char c; (c = *f++);) {
        if (c != '%')
            kputc(c);
        else if ((c = *f++) == 's')
            kputs((const char *)*arg++);
        else
            hex(*arg++, c - '0');
    }
}
