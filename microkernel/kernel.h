// microkernel/kernel.h -- types, port I/O and what each file offers the others.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3F8

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { asm volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port)
{
    u16 v;
    asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u8 inb(u16 port)
{
    u8 v;
    asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

// serial.c
void serial_init(void);
void kputc(char c);
void kputs(const char *s);
void kprintf(const char *fmt, ...);    // entry.asm: every argument must be a u64 or pointer

// entry.asm
void copy(volatile void *dst, const volatile void *src, u64 n);
u64 access(u32 kind, u32 bytes, u64 addr, u64 value);

// trap.c
void idt_init(void);
_Noreturn void qexit(u8 code);

// pci.c
void pci_scan(void);
void pci_stop(u32 bdf);

// iommu.c
void iommu_init(void);
void iommu_map(u64 base, u64 size);
void iommu_device(u32 bdf);
void iommu_poll(void);

// vgpu.c
struct vg_payload;
extern u64 served, wakes;
extern struct vg_boot boot;             // what the GPU's program learns (docs/drivers.md)
void broker_allow(u64 base, u64 size, int io);
void vgpu_attach(u64 bar0, u64 bar2, u64 size);
void vgpu_start(const struct vg_payload *p, u64 size);
void vgpu_poll(void);
void vgpu_event(u32 source, u64 data);

// timer.c
extern u64 halted;
extern volatile u8 com1_quiet;          // entry.asm: 0 once COM1's IRQ 4 came
u64 rdtsc(void);
void pic_init(void);
u64 idle(void);
u64 tsc_khz(void);
