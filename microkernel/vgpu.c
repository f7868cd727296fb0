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

static struct range { u64 base, end; u32 io; } allow[32];   // filled by pci.c
static u32 nallow;
static volatile struct vg_header *vh;      // VRAM (BAR2); 0: no vGPU
static u64 vram;                           // its size, from PCI
static volatile u32 *doorbell;             // BAR0 + 12
static u32 req_tail, rsp_head, evt_head, reported;
u64 served, wakes;

// The rings sit at offsets fixed by the layout version (vgpu_layout.h): we
// never follow an offset read from VRAM.
#define RQ ((volatile struct vg_request *)((u8 *)vh + VG_REQ_OFF))
#define RS ((volatile struct vg_response *)((u8 *)vh + VG_RSP_OFF))
#define EV ((volatile struct vg_event *)((u8 *)vh + VG_EVT_OFF))

void broker_allow(u64 base, u64 size, int io)
{
    // A BAR above the 4 GiB identity map could not be touched without a fault.
    if (nallow < 32 && (io || base + size <= 1UL << 32))
        allow[nallow++] = (struct range){base, base + size, io};
}

// BARs 0 (registers; Doorbell at 12) and 2 (VRAM).  A bridge writes its magic
// before QEMU starts; without one this is just some ivshmem device.
void vgpu_attach(u64 bar0, u64 bar2, u64 size)
{
    volatile struct vg_header *h = (void *)bar2;
    if (size < VG_MIN_VRAM || h->magic != VG_MAGIC || h->version != VG_VERSION)
        return;
    vh = h;
    vram = size;
    doorbell = (volatile u32 *)(bar0 + 12);
}

static void ring(void) { *doorbell = VG_MSIX_VECTOR; }   // peer 0 (the bridge) << 16

// Copy the program (a PXIP payload: header + pixels, docs/vgpu.md) into VRAM
// and ask the bridge to run it.  The program area ends where the heap starts,
// at half the VRAM.
void vgpu_start(const struct vg_payload *p, u64 size)
{
    if (!vh || !size)
        return;
    u64 bytes = (u64)p->pixels * 4;
    if (p->magic != VG_PAYLOAD_MAGIC || size < sizeof *p + bytes
        || bytes > vram / 2 - VG_PROG_OFF) {
        kputs("!PANIC payload\n");
        qexit(0x1F);
    }
    copy((u8 *)vh + VG_PROG_OFF, p + 1, bytes);
    copy(&vh->prog_width, &p->width, 5 * 4);    // width, pixels, entry, threads, memory
    vh->heap_phys = (u64)vh + vram / 2;
    vh->dma_base = VG_DMA_BASE;
    vh->dma_size = VG_DMA_SIZE;
    vh->state = VG_STATE_START;
    ring();
    kputs("@gpu start\n");
}

// May the GPU make this access?  Widths: 8/16/32 bits for ports, up to 64
// for MMIO (the bit masks below: 1 << bytes for 1, 2, 4, 8), MMIO naturally
// aligned.  Kinds: 1 port in, 2 port out, 3 MMIO read, 4 MMIO write.
static int allowed(u32 kind, u32 width, u64 a)
{
    u32 bytes = width / 8, io = kind <= VG_KIND_PORT_OUT;
    // Ports are 16-bit and everything MMIO may reach lies below the 4 GiB
    // identity map: refusing larger addresses first also means a + bytes
    // below cannot wrap around (0xFFFFFFFFFFFFFFFF + 1 would pass the checks).
    if (!kind || kind > VG_KIND_MMIO_WRITE || a >> (io ? 16 : 32) || width & 7
        || !((io ? 0x16 : 0x116) >> bytes & 1) || (!io && a & (bytes - 1)))
        return 0;
    int ok = io ? a >= COM1 && a + bytes <= COM1 + 8
                : a >= VG_DMA_BASE && a + bytes <= VG_DMA_BASE + VG_DMA_SIZE;
    for (u32 i = 0; i < nallow; i++)
        ok |= allow[i].io == io && a >= allow[i].base && a + bytes <= allow[i].end;
    return ok;
}

// After every wake-up: serve each posted request, then tell the bridge.
void vgpu_poll(void)
{
    if (!vh)
        return;
    u32 head = vh->req_head, n = 0;
    if (head - req_tail > N)
        head = req_tail;                    // nonsense from the other side: serve nothing
    for (; req_tail != head; req_tail++, n++) {
        volatile struct vg_request *e = &RQ[req_tail % N];
        volatile struct vg_response *r = &RS[rsp_head++ % N];
        u32 kind = e->kind, width = e->width;
        u64 a = e->addr;
        int ok = allowed(kind, width, a);
        r->seq = e->seq;
        r->value = ok ? access(kind, width / 8, a, e->value) : 0;
        r->status = !ok;                    // VG_STATUS_OK 0, VG_STATUS_DENY 1
        if (!ok)
            kprintf("!DENY kind=%1 addr=%1 width=%1\n", (u64)kind, a, (u64)width);
    }
    if (n) {
        served += n;
        vh->req_tail = req_tail;            // publish after the entries (x86 keeps store order)
        vh->rsp_head = rsp_head;
        ring();
    }
    u32 state = vh->state;
    if (state >= VG_STATE_HALTED && state != reported) {
        reported = state;
        kprintf("@gpu end state=%1 steps=%1\n", (u64)state, vh->steps);
    }
}

// A device interrupt the GPU may want (today: a byte from COM1).
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
