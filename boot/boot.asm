; boot/boot.asm -- the pxOS boot sector (BIOS path).  Exactly 512 bytes.
;
; The BIOS loads this sector to 0x7C00 and jumps to it in real mode with the
; boot drive in DL.  We:
;   1. stamp the TSC into the hand-off block (`@stage boot`),
;   2. enable A20 and load the GDT (boot/longmode.inc),
;   3. read the kernel image and the payload that follows it on the disk
;      (hand-off `sectors` sectors, starting at LBA 1) in chunks of 64
;      sectors into a bounce buffer below 1 MiB with int 13h AH=42h, and copy
;      each chunk up to 0x100000 in "unreal" mode (ES with a 4 GiB limit),
;   4. switch to 32-bit protected mode and from there to long mode
;      (PXOS_ENTER_LONG_MODE, page tables at 0x1000),
;   5. stamp the TSC again (`@stage lmode`) and jump to the kernel at 0x100000.
;
; hil/image.py patches `sectors`, `payload_addr` and `payload_size` into the
; hand-off block, which it finds by its magic.  The block stays at 0x7DD0
; after boot; the kernel reads it there (microkernel/boot.h, docs/image.md).

        bits    16
        org     0x7C00

%include "longmode.inc"

BUFFER  equ     0x8000                  ; bounce buffer: 0x8000-0xFFFF
CHUNK   equ     64                      ; sectors per read (32 KiB)
KERNEL  equ     0x100000                ; where the kernel is linked
TABLES  equ     0x1000                  ; page tables: 0x1000-0x6FFF
HANDOFF equ     0x1D0                   ; offset of the hand-off block

start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        cld
        push    dx                      ; DL = boot drive; rdtsc clobbers EDX
        rdtsc
        mov     [tsc_boot], eax
        mov     [tsc_boot + 4], edx
        pop     dx
        in      al, 0x92                ; "fast A20" through System Control Port A
        or      al, 2
        out     0x92, al
        mov     edi, KERNEL             ; copy destination, advanced by rep movsd
        mov     bp, [sectors]           ; sectors still to read

.read:  test    bp, bp
        jz      .loaded
        mov     ax, CHUNK
        cmp     bp, ax
        jae     .full
        mov     ax, bp                  ; last, partial chunk
.full:  sub     bp, ax
        mov     [dap_count], ax
        mov     si, dap
        mov     ah, 0x42                ; extended read, DL = BIOS boot drive
        push    edi
        push    dx
        int     0x13
        pop     dx
        pop     edi
        jc      disk_error
        cli                             ; the BIOS may have enabled interrupts
        ; Our GDT again after every BIOS call: SeaBIOS may run its drivers in
        ; 32-bit mode and come back with *its* GDT still loaded -- selector 8
        ; then means something else and loading it faults (a triple fault,
        ; seen on `pc` with USB storage attached, about 1 boot in 40 under load).
        lgdt    [gdt]
        ; Unreal mode: load ES in protected mode so its hidden limit becomes
        ; 4 GiB, then drop back to real mode.  The BIOS reloads ES on every
        ; call, so this is redone for each chunk.
        mov     eax, cr0
        or      al, 1
        mov     cr0, eax
        mov     bx, SEL_DATA
        mov     es, bx
        and     al, 0xFE
        mov     cr0, eax
        movzx   ecx, word [dap_count]
        shl     ecx, 7                  ; sectors -> dwords
        mov     esi, BUFFER
        a32 rep movsd                   ; DS:ESI -> ES:EDI (flat)
        add     dword [dap_lba], CHUNK
        jmp     .read

.loaded:
        mov     eax, cr0
        or      al, 1
        mov     cr0, eax
        jmp     SEL_CODE32:pm32

disk_error:                             ; say so on COM1 (works without set-up
        mov     si, panic_msg           ; under QEMU) and exit with the panic
        mov     dx, 0x3F8               ; code (docs/console.md)
.next:  lodsb
        out     dx, al
        cmp     al, 10
        jne     .next
        mov     al, 0x1F
        out     0xF4, al
.halt:  hlt
        jmp     .halt

        bits    32
pm32:   mov     eax, SEL_DATA
        mov     ds, eax
        mov     es, eax
        mov     ss, eax
        PXOS_ENTER_LONG_MODE TABLES, lm64, 1

        bits    64
lm64:   rdtsc
        mov     [rel tsc_lmode], eax
        mov     [rel tsc_lmode + 4], edx
        mov     eax, KERNEL
        jmp     rax

panic_msg:
        db      "!PANIC boot: disk read failed", 10

        align   4
dap:                                    ; int 13h AH=42h disk address packet
        db      0x10, 0
dap_count:
        dw      0
        dw      BUFFER, 0               ; buffer offset, segment
dap_lba:
        dq      1                       ; the kernel starts right after us

        align   8
        PXOS_GDT gdt

        times   HANDOFF - ($ - $$) db 0
; Hand-off block (docs/image.md).  32 bytes at 0x7DD0 in memory.
handoff:
        db      "pxHO"                  ; +0  magic: hil/image.py finds the block by it
sectors:
        dw      0                       ; +4  sectors to load after this one (patched)
        dw      1                       ; +6  hand-off layout version
payload_addr:
        dd      0                       ; +8  payload physical address, 0 = none (patched)
payload_size:
        dd      0                       ; +12 payload size in bytes (patched)
tsc_boot:
        dq      0                       ; +16 TSC at the first instruction
tsc_lmode:
        dq      0                       ; +24 TSC once long mode is reached

        times   510 - ($ - $$) db 0
        dw      0xAA55
