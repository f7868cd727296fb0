// microkernel/vgpu.c -- the virtual GPU: hand it the program, then serve it.
//
// The GPU cannot touch ports or device registers, so its threads ask us
// (docs/vgpu.md).  We are a privilege broker: a request is carried out only
// if it targets COM1, a BAR of a device *we* enumerated (never the vGPU's
// own), or the guest-RAM DMA window; anything else is answered DENY and
// logged.  The other side can change VRAM at any moment, so every field is
// read once, into a local, before it is checked, and our ring counters live
// here (VRAM only gets copies).
#include "kernel.h"
#include "vgpu_layout.h"

#define N VG_RING_ENTRIES

// BARs the GPU may touch, from pci.c.  A size fits 32 bits (memory ones end
// below 4 GiB) and is at least the widest access of its kind (I/O BARs are
// 4 bytes or more, memory BARs 16): allowed() relies on both.
static struct range { u64 base; u32 size, io; } allow[32];
static u32 nallow;
static volatile struct vg_header *vh;      // VRAM (BAR2); 0: no vGPU
static u64 heap;                           // half its size (from PCI): where the heap starts
static volatile u32 *doorbell;             // BAR0 + 12
// Requests consumed = responses posted: one response per request, so
// req_tail also indexes the response ring and is what rsp_head publishes.
static u32 req_tail, evt_head, reported;
u64 served, wakes;
struct vg_boot boot;                       // pci.c fills the function table

// The rings sit at offsets fixed by the layout version (vgpu_layout.h): we
// never follow an offset read from VRAM.
#define RQ ((volatile struct vg_request *)((u8 *)vh + VG_REQ_OFF))
#define RS ((volatile struct vg_response *)((u8 *)vh + VG_RSP_OFF))
#define EV ((volatile struct vg_event *)((u8 *)vh + VG_EVT_OFF))

void broker_allow(u64 base, u64 size, int io)
{
    // A BAR above the 4 GiB identity map could not be touched without a
    // fault; base 0 is a BAR pci.c found no room for (it decodes nothing).
    if (nallow < 32 && base && (io || (base + size - 1) >> 32 == 0))
        allow[nallow++] = (struct range){base, size, io};
}

// BARs 0 (registers; Doorbell at 12) and 2 (VRAM).  A bridge writes its magic
// before QEMU starts; without one this is just some ivshmem device.
void vgpu_attach(u64 bar0, u64 bar2, u64 size)
{
    volatile struct vg_header *h = (void *)bar2;
    // Both BARs inside the 4 GiB identity map (as broker_allow demands), or we
    // would fault on the first look.
    if (size < VG_MIN_VRAM || (bar0 | (bar2 + size - 1)) >> 32 || h->magic != VG_MAGIC
        || h->version != VG_VERSION)
        return;
    vh = h;
    iommu_map(bar2, size);              // devices may DMA into VRAM (and the DMA window)
    heap = size / 2;
    doorbell = (volatile u32 *)(bar0 + 12);
}

static void ring(void) { *doorbell = VG_MSIX_VECTOR; }   // peer 0 (the bridge) << 16

// Copy the program (a PXIP payload: header + pixels, docs/vgpu.md) into VRAM
// and ask the bridge to run it.  The program area ends where the heap starts,
// at half the VRAM.
void vgpu_start(const struct vg_payload *p, u64 size)
{
    volatile struct vg_header *h = vh;
    if (!h || !size)
        return;
    u64 bytes = (u64)p->pixels * 4;
    if (p->magic != VG_PAYLOAD_MAGIC || p->version != VG_PAYLOAD_VERSION
        || size < sizeof *p + bytes || bytes > heap - VG_PROG_OFF) {
        kputs("!PANIC payload\n");
        qexit(0x1F);
    }
    copy((u8 *)h + VG_PROG_OFF, p + 1, bytes);
    copy(&h->prog_width, &p->width, 5 * 4);     // width, pixels, entry, threads, memory
    // The boot info at data address 0: where the heap is on the bus, and the
    // PCI functions (pci.c), for the drivers among the pixels.
    boot.magic = VG_BOOT_MAGIC | (u64)VG_VERSION << 32;
    boot.heap_phys = (u64)h + heap;
    copy((u8 *)h + heap, &boot, sizeof boot);
    h->state = VG_STATE_START;
    ring();
    kputs("@gpu start\n");
}

// May the GPU make this access?  Widths: 8/16/32 bits for ports, up to 64
// for MMIO (the bit masks below: 1 << bytes for 1, 2, 4, 8), MMIO naturally
// aligned.  Kinds: 1 port in, 2 port out, 3 MMIO read, 4 MMIO write.  The
// range test is a - base <= size - bytes: no sum that could wrap around.
static int allowed(u32 kind, u32 width, u64 a)
{
    u32 bytes = width / 8, io = kind <= VG_KIND_PORT_OUT;
    if (!kind || kind > VG_KIND_MMIO_WRITE || width & 7 || !((io ? 0x16 : 0x116) >> bytes & 1)
        || (!io && a & (bytes - 1)))
        return 0;
    // Ranges as "a - base <= size - bytes": unlike "a + bytes <= end", this
    // cannot wrap (a = 0xFFFFFFFFFFFFFFFF, bytes = 1 once passed and faulted).
    int ok = io ? a - COM1 <= 8 - bytes : a - VG_DMA_BASE <= VG_DMA_SIZE - bytes;
    for (struct range *r = allow; r < allow + nallow; r++)
        ok |= r->io == io && a - r->base <= r->size - bytes;
    return ok;
}

// After every wake-up: turn device interrupts into events, serve each posted
// request, then tell the bridge.  A device vector's stub sends no EOI
// (entry.asm), so the local APIC's in-service register still says which
// arrived; each becomes an event, then its EOI (which clears the highest bit
// in service: the other vectors EOI in their stub).  Until then the APIC holds
// back the lower vectors (the vGPU's 0x28, the PIC's): we are right here.
void vgpu_poll(void)
{
    u32 isr;
    while ((isr = *(volatile u32 *)(0xFEE00100 + VG_DEV_VECTOR / 32 * 16) >> VG_DEV_VECTOR % 32)) {
        vgpu_event(VG_SRC_IRQ, 31 - __builtin_clz(isr));
        *(volatile u32 *)0xFEE000B0 = 0;
    }
    if (!vh)
        return;
    u32 head = vh->req_head;
    if (head - req_tail > N)
        head = req_tail;                    // nonsense from the other side: serve nothing
    if (head != req_tail) {
        served += head - req_tail;
        for (; req_tail != head; req_tail++) {
            volatile struct vg_request *e = &RQ[req_tail % N];
            volatile struct vg_response *r = &RS[req_tail % N];
            u32 kind = e->kind, width = e->width;
            u64 a = e->addr;
            int ok = allowed(kind, width, a);
            r->seq = e->seq;
            r->value = ok ? access(kind, width / 8, a, e->value) : 0;
            r->status = !ok;                // VG_STATUS_OK 0, VG_STATUS_DENY 1
            if (!ok)
                kprintf("!DENY kind=%1 addr=%1 width=%1\n", (u64)kind, a, (u64)width);
        }
        vh->req_tail = req_tail;            // publish after the entries (x86 keeps store order)
        vh->rsp_head = req_tail;
        ring();
    }
    u32 state = vh->state;
    if (state >= VG_STATE_HALTED && state != reported) {
        reported = state;
        kprintf("@gpu end state=%1 steps=%1\n", (u64)state, vh->steps);
    }
}

// Something the GPU may wait for: a byte from COM1, a device interrupt.
void vgpu_event(u32 source, u64 data)
{
    if (!vh || vh->state != VG_STATE_RUNNING)
        return;
    if (evt_head - vh->evt_tail >= N) {
        vh->evt_dropped++;
        return;
    }
    volatile struct vg_event *e = &EV[evt_head % N];
    e->seq = evt_head;
    e->source = source;
    e->data = data;
    vh->evt_head = ++evt_head;
    ring();
}
