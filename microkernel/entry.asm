; microkernel/entry.asm -- the only assembly in the kernel: the two ways in
; (BIOS and PVH), the IDT and the interrupt entry points, and the few routines
; that are smaller here than in C (kprintf's argument shim, copy, access).

%ifdef PXOS_BOOT_MARKERS
%define PXOS_MARKS                      ; timing markers (benchmarks/boot_breakdown.py)
%endif
%include "longmode.inc"                 ; from boot/: shared with the boot sector

extern  kmain, qexit, vprint
global  _start, idt_init, kprintf, copy, access, com1_quiet

; --- BIOS path ------------------------------------------------------------
; The boot sector copies the image to 0x100000 and jumps to its first byte in
; long mode, so _start must stay first (the linker script puts .text.entry
; first).  Its page tables (0x1000) and GDT (0x7C00) stay in use.
        section .text.entry align=1
        bits    64
_start: xor     edi, edi                ; kmain(NULL, 0): no start_info = BIOS path
start64:                                ; rdi = hvm_start_info or NULL, rsi = TSC at lmode
        mov     esp, stack_top
        jmp     kmain

; --- PVH path -------------------------------------------------------------
; QEMU `-kernel kernel.elf` finds the note below and enters here in 32-bit
; protected mode, paging off, with ebx = hvm_start_info (its module list
; carries the -initrd payload).  The loader's GDT is unknown, so load ours.
        bits    32
pvh_entry:
        PXOS_MARK 'X'
        cld                             ; string ops below (and C) assume DF=0
        lgdt    [gdt]
        PXOS_ENTER_LONG_MODE pvh_tables, pvh64, 0

        bits    64
pvh64:  rdtsc                           ; `@stage lmode` for the PVH path
        shl     rdx, 32
        lea     rsi, [rax + rdx]
        xor     eax, eax                ; SS still names the loader's GDT and an
        mov     ss, eax                 ; iretq would reload it from ours: null it
        mov     edi, ebx
        jmp     start64

; --- Exceptions -----------------------------------------------------------
; IDT vector v (0-31) points at isr_sled + 2*v.  The sled is 32 two-byte
; `push -1`: entering at v pushes 32-v copies of -1, then falls into
; isr_common, which counts them to recover v.  Nothing the CPU pushed can be
; -1 (error codes are 32-bit, RIP is a low canonical address), so the count
; is exact.  That is 2 bytes per vector instead of a push+jmp stub.
        section .text align=1
isr_sled:
%rep 32
        push    byte -1
%endrep
isr_common:
        push    33
        pop     rsi
.count: dec     esi
        pop     rax
        cmp     rax, byte -1
        je      .count                  ; rax: not ours, the error code or RIP
        xor     edx, edx                ; error code: 0 unless the CPU pushed one
        mov     ecx, (1 << 8) | (7 << 10) | (3 << 13) | (1 << 17) | (1 << 21) | (3 << 29)
        bt      ecx, esi                ; #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX
        jnc     .noerr
        xchg    rax, rdx
        pop     rax
.noerr: xchg    rax, rcx                ; RIP of the faulting instruction
        mov     r8, cr2
        ; The `!EXC` line (docs/console.md), then QEMU exits with 0x20 + v:
        ; no exception may end in a silent triple fault.
        push    rsi
        mov     edi, exc_line
        call    kprintf                 ; kprintf(exc_line, v, err, rip, cr2)
        pop     rdi
        add     edi, 0x20
        jmp     qexit

; --- idt_init(): vectors 0-31 into the sled, 0x20-0x2F at irq_stub, 0x30-0x3F irq_iret
; 64-bit interrupt gates, 16 bytes each: offset 15:0 and selector 0x10
; (64-bit code), then type 0x8E (present, DPL 0, interrupt gate) and offset
; 31:16.  The kernel lives below 4 GiB, so the upper 8 bytes (offset 63:32)
; stay 0 from .bss and scasq just steps over them.
idt_init:
        mov     edi, idt
        mov     edx, isr_sled
.gate:  movzx   eax, dx
        or      eax, SEL_CODE64 << 16
        stosd
        mov     eax, edx
        mov     ax, 0x8E00
        stosd
        scasq
        add     edx, 2                  ; the next sled entry
        cmp     edi, idt + 32 * 16
        jb      .gate
        mov     edx, irq_stub           ; from vector 0x20 on
        cmp     edi, idt + 0x30 * 16
        jb      .gate
        mov     edx, irq_iret           ; 0x30-0x3F: device vectors, no EOI
        cmp     edi, idt_end
        jb      .gate
        ; Vector 0x24 (COM1) enters at com1_irq: only the gate's offset 15:0
        ; differs from irq_stub's, the whole kernel lies in 0x100000-0x10FFFF.
        mov     eax, com1_irq
        mov     [rel idt + 0x24 * 16], ax
        lidt    [rel idtr]
        ret

; COM1's IRQ 4 (vector 0x24) says so first: the idle loop reads the UART's
; line status only after one (each read is an exit to QEMU, and most wake-ups
; are the vGPU's; issue 17: ping round trip -12 % under TCG, driver-like
; stream +9-10 % requests/s under TCG and nested KVM).
com1_irq:
        mov     byte [rel com1_quiet], 0
; Hardware interrupts (PIC vectors 0x20-0x27, the vGPU's MSI-X 0x28; 0x29-0x2F unused).  The
; idle loop polls the devices after every wake-up, so an interrupt only has to
; end the `hlt`.  The PIC runs in auto-EOI mode; an MSI goes through the local
; APIC, which wants an EOI (harmless when nothing is in service).
irq_stub:
        push    rax
        mov     eax, 0xFEE000B0         ; local APIC EOI register
        mov     dword [rax], 0
        pop     rax
; Device interrupts (VG_DEV_VECTOR 0x30-0x3F, routed for the GPU) enter here:
; no EOI, so the APIC's in-service bit tells vgpu_poll which one it was.
irq_iret:
        iretq

; --- copy(dst, src, n): memcpy in three instructions -----------------------
copy:   mov     rcx, rdx
        rep movsb
        ret

; --- access(kind, bytes, addr, value): one port or MMIO access -------------
; For the privilege broker (vgpu.c), which has already checked it.  Device
; registers care about the exact width, so each width is its own instruction.
; kind: 1 port in, 2 port out, 3 MMIO read, 4 MMIO write; bytes: 1, 2, 4, 8.
; Returns what was read (zero-extended), else 0.
access: xchg    rax, rcx                ; rax = value to write
        xor     ecx, ecx                ; rcx = the result of a write: 0
        dec     edi
        jz      .in
        dec     edi
        jz      .out
        dec     edi
        jnz     .write
        xor     eax, eax                ; MMIO read
        cmp     esi, 2
        jb      .rb
        je      .rw
        cmp     esi, 4
        je      .rd
        mov     rax, [rdx]
        ret
.rd:    mov     eax, [rdx]
        ret
.rw:    mov     ax, [rdx]
        ret
.rb:    mov     al, [rdx]
        ret
.write: cmp     esi, 2
        jb      .wb
        je      .ww
        cmp     esi, 4
        je      .wd
        mov     [rdx], rax
        jmp     .zero
.wd:    mov     [rdx], eax
        jmp     .zero
.ww:    mov     [rdx], ax
        jmp     .zero
.wb:    mov     [rdx], al
        jmp     .zero
.in:    xor     eax, eax
        cmp     esi, 2
        jb      .inb
        je      .inw
        in      eax, dx
        ret
.inw:   in      ax, dx
        ret
.inb:   in      al, dx
        ret
.out:   cmp     esi, 2
        jb      .outb
        je      .outw
        out     dx, eax
        jmp     .zero
.outw:  out     dx, ax
        jmp     .zero
.outb:  out     dx, al
.zero:  xchg    rax, rcx
        ret

; --- kprintf(fmt, ...) ------------------------------------------------------
; The SysV ABI passes the first variadic arguments in rsi, rdx, rcx, r8, r9
; and the rest on the stack, above the return address.  Pushing the five
; registers right below the stack arguments (the return address popped out
; of the way) makes all arguments one u64 array: vprint(fmt, args).  That is
; much smaller than GCC's va_arg code, which tests for both cases each time.
kprintf:
        pop     rax                     ; return address
        push    r9
        push    r8
        push    rcx
        push    rdx
        push    rsi
        mov     rsi, rsp                ; u64 args[]
        push    rax
        call    vprint
        pop     rax
        add     rsp, 5 * 8
        jmp     rax

; --- PVH ELF note -----------------------------------------------------------
; XEN_ELFNOTE_PHYS32_ENTRY (18): the 32-bit entry point.  QEMU reads a
; 64-bit value from an ELF64 note.  QEMU reads notes from the file (PT_NOTE),
; so the section is not allocated: it costs the loaded image nothing.
        section .note.pvh note noalloc noexec nowrite align=4
        dd      4, 8, 18
        db      "Xen", 0
        dq      pvh_entry

        section .rodata
        align   8
        PXOS_GDT gdt
exc_line: db    "!EXC vec=%1 err=%1 rip=%1 cr2=%1", 10, 0
idtr:   dw      idt_end - idt - 1
        dq      idt

        section .bss
        align   16
        resb    4096
stack_top:
idt:    resb    0x40 * 16               ; exceptions, PIC 0x20-0x27, MSI-X 0x28, devices 0x30-0x3F
idt_end:
com1_quiet: resb 1                      ; 0: COM1 may hold input (main.c looks, then sets 1)

; PVH page tables: six pages, outside .bss (the linker script puts them last;
; on the BIOS path a payload may overlay them).
        section .pgtables nobits alloc write noexec align=4096
pvh_tables:
        resb    6 * 4096
