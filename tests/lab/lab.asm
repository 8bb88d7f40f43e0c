; =============================================================================
; vtdbg lab hypervisor for Bochs (tests/lab/lab.asm)
;
; A bare-metal floppy image: real mode -> 32-bit protected mode -> long mode
; (host identity map of 4 GiB), VMXON, then
;   1. a VMREAD probe of the whole encoding space on a scratch VMCS,
;   2. the VM-entry failure scenarios, each in a fresh VMCS region,
;   3. the main run: a 64-bit guest with EPT that provokes a list of VM exits,
;   4. ground truth (F / MSR / INFO lines on port 0xE9), magic breakpoints,
;      VMCLEAR, VMXOFF.
;   With -DSMP (two CPUs) the scenarios are skipped and, before step 3, the
;   BSP starts the AP (INIT-SIPI-SIPI), which does its own VMXON/VMCS/VMLAUNCH.
; Build: nasm -f bin [-DSMP] lab.asm -o lab.img   (1.44 MB floppy image)
; Output protocol: see tests/lab/run.py (parse_output); memory layout:
; tests/fixtures/lab/README.md.
; Bochs 2.7 notes: the external-interrupt exit only happens with guest
; RFLAGS.IF = 1 (the guest executes STI first), although the SDM says IF does
; not block external interrupts when external-interrupt exiting is 1.
; =============================================================================

; ---------------------------------------------------------------- layout ----
%define HOST_IDT_PA     0x00002000
%define HOST_PML4_PA    0x00010000
%define HOST_PDPT_PA    0x00011000
%define HOST_PD_PA      0x00012000      ; GiB 0 (GiB 1..3 at HOST_PD_HI_PA)
%define GUEST_PML4_PA   0x00013000
%define TSS_PA          0x00015000
%define HOST_PD_HI_PA   0x00016000      ; 3 pages: GiB 1..3 (local APIC at 0xFEE00000)
%define GUEST_PDPT_PA   0x00019000
%define GUEST_PD_PA     0x0001A000
%define VMXON_PA        0x00020000
%define VMCS_PA         0x00021000
%define MSR_BITMAP_PA   0x00022000
%define IO_BITMAP_A_PA  0x00023000
%define IO_BITMAP_B_PA  0x00024000
%define EXIT_LOG_PA     0x00026000
%define MSR_AREA_PA     0x00027000
%define GREGS_PA        0x00028000
%define SCEN_RES_PA     0x00028800
%define MSR_TABLE_PA    0x00029000
%define PROBE_VMCS_PA   0x0002F000
%define EPT_PML4_PA     0x00030000
%define EPT_PDPT_PA     0x00031000
%define EPT_PD_PA       0x00032000
%define VAPIC_PA        0x00033000
%define BAD_LINK_PA     0x0003E000
%define INFO_PA         0x0003F000
%define SCEN_STACK_TOP  0x00058000
%define GUEST_STACK_TOP 0x00060000
%define HOST_STACK_TOP  0x00068000
%define EXIT_STACK_TOP  0x00070000
%define AP_TRAMP_PA     0x00001000      ; SMP: AP start-up trampoline (SIPI vector 0x01)
%define AP_VMXON_PA     0x0002A000      ; SMP: the AP's VMXON region
%define AP_VMCS_PA      0x0002B000      ; SMP: the AP's VMCS
%define AP_EXIT_LOG_PA  0x0002C000
%define AP_STACK_TOP    0x0004C000
%define AP_EXIT_STACK   0x00050000
%define AP_GUEST_STACK  0x00054000
%define SCEN_VMCS_BASE  0x00100000
%define SCEN_SAVE_BASE  0x00140000
%define PROBE_TABLE_PA  0x00180000
%define PROBE_ENTRIES   16384
%define MAX_SCEN        64
%define MAX_STOPS       32
%define EXIT_REC_SIZE   128
%define EPT_HOLE_GPA    0x00600000
%define PF_HOLE_GLA     0x00800000
%define LAPIC_PA        0xFEE00000
%define IPI_VECTOR      0x40

; info block (u64 slots at INFO_PA + offset)
%define INFO_MAGIC      0x00
%define INFO_VERSION    0x08
%define INFO_REVISION   0x10
%define INFO_VMXON      0x18
%define INFO_VMCS       0x20
%define INFO_EPTP       0x28
%define INFO_HOST_CR3   0x30
%define INFO_GUEST_CR3  0x38
%define INFO_EXITS      0x40
%define INFO_EXIT_LOG   0x48
%define INFO_EXIT_RECSZ 0x50
%define INFO_PROBE      0x58
%define INFO_PROBE_N    0x60
%define INFO_SUPPORTED  0x68
%define INFO_SCEN_N     0x70
%define INFO_SCEN_VMCS  0x78
%define INFO_SCEN_SAVE  0x80
%define INFO_SCEN_RES   0x88
%define INFO_FEATURES   0x90
%define INFO_MAXPHY     0x98
%define INFO_MSR_TABLE  0xA0
%define INFO_MSR_N      0xA8
%define INFO_GUEST_RIP0 0xB0
%define INFO_HOST_RIP   0xB8
%define INFO_PIN        0xC0
%define INFO_PROC       0xC8
%define INFO_PROC2      0xD0
%define INFO_EXIT_CTL   0xD8
%define INFO_ENTRY_CTL  0xE0
%define INFO_MSR_BITMAP 0xE8
%define INFO_IO_A       0xF0
%define INFO_IO_B       0xF8
%define INFO_GUEST_PML4 0x100
%define INFO_EPT_PML4   0x108
%define INFO_HOST_PML4  0x110
%define INFO_STATE      0x118
%define INFO_CPUS       0x120
%define INFO_AP_VMXON   0x128
%define INFO_AP_VMCS    0x130
%define INFO_AP_EXITS   0x138
%define INFO_AP_STATE   0x140

; feature bits (INFO_FEATURES), tested by the guest before each provoked exit
%define F_MSR           (1 << 0)
%define F_IO            (1 << 1)
%define F_CR3           (1 << 2)
%define F_CR8           (1 << 3)
%define F_DR            (1 << 4)
%define F_INVLPG        (1 << 5)
%define F_RDTSC         (1 << 6)
%define F_HLT           (1 << 7)
%define F_EPT           (1 << 8)
%define F_EXTINT        (1 << 9)
%define F_SECONDARY     (1 << 10)

; scenario record flags
%define FL_OR           (1 << 0)
%define FL_ANDN         (1 << 1)
%define FL_VMRESUME     (1 << 2)
%define FL_MOVSS        (1 << 3)
%define FL_VMCLEAR      (1 << 4)
%define FL_NEED_EPT     (1 << 5)

; scenario results
%define R_VMFAIL_INVALID 1
%define R_VMFAIL_VALID   2
%define R_ENTRY_FAILURE  3
%define R_OK             4
%define R_SKIPPED        5
%define R_ANOMALY        6

; -------------------------------------------------------------- macros ------
%macro PRINT 1
        jmp     %%skip
%%str:  db      %1, 0
%%skip:
        push    rsi
        lea     rsi, [rel %%str]
        call    puts
        pop     rsi
%endmacro

; PHEX value, nibbles   (value must not be rcx)
%macro PHEX 2
        push    rax
        push    rcx
        mov     rax, %1
        mov     ecx, %2
        call    puthex
        pop     rcx
        pop     rax
%endmacro

%macro PCHAR 1
        push    rax
        mov     al, %1
        call    putc
        pop     rax
%endmacro

; VMW encoding, value   (fatal on VMWRITE failure)
%macro VMW 2
        mov     rax, %2
        mov     edx, %1
        call    vmw
%endmacro

; VMR encoding -> rax   (fatal on VMREAD failure)
%macro VMR 1
        mov     edx, %1
        call    vmr
%endmacro

; scenario record: id, rule, flags, apply-fn (0 = generic), enc, value, desc
%macro SCEN 7
%%rec:
        dq      %%end
        dq      %4
        dq      %3
        dq      %5
        dq      %6
        db      %1, 0
        db      %2, 0
        db      %7, 0
%%end:
%endmacro

; =============================================================================
        bits    16
        org     0x7C00

start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00
        cld
        mov     [boot_drive], dl
        mov     al, 'L'
        out     0xE9, al
        mov     word [cur_lba], 1
        mov     word [cur_seg], 0x07E0
.load:
        mov     ax, [cur_lba]
        xor     dx, dx
        mov     bx, 18
        div     bx                      ; ax = lba / 18, dx = lba % 18
        mov     cl, dl
        inc     cl                      ; sector (1-based)
        mov     dh, al
        and     dh, 1                   ; head
        shr     ax, 1
        mov     ch, al                  ; cylinder
        mov     dl, [boot_drive]
        mov     bx, [cur_seg]
        mov     es, bx
        xor     bx, bx
        mov     ax, 0x0201
        int     0x13
        jc      .disk_error
        add     word [cur_seg], 0x20
        inc     word [cur_lba]
        cmp     word [cur_lba], LOAD_SECTORS + 1
        jb      .load
        xor     ax, ax
        mov     es, ax
        in      al, 0x92                ; fast A20
        or      al, 2
        and     al, 0xFE
        out     0x92, al
        mov     al, 0xFF                ; mask both PICs: no stray interrupts
        out     0x21, al
        out     0xA1, al
        lgdt    [gdt_desc]
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        jmp     0x18:pm32
.disk_error:
        mov     al, 'E'
        out     0xE9, al
.hang:
        hlt
        jmp     .hang

boot_drive:     db 0
cur_lba:        dw 0
cur_seg:        dw 0

        align   16
gdt:
        dq      0                       ; 0x00 null
        dq      0x00AF9B000000FFFF      ; 0x08 64-bit code
        dq      0x00CF93000000FFFF      ; 0x10 data
        dq      0x00CF9B000000FFFF      ; 0x18 32-bit code
        dq      0x0000890150000067      ; 0x20 64-bit TSS at TSS_PA (0x15000), limit 0x67
        dq      0
%ifdef SMP
        dq      0x0000890151000067      ; 0x30 the AP's TSS at TSS_PA + 0x100
        dq      0
%endif
gdt_end:
gdt_desc:
        dw      gdt_end - gdt - 1
        dd      gdt
gdt_desc64:
        dw      gdt_end - gdt - 1
        dq      gdt

        times   510 - ($ - $$) db 0
        dw      0xAA55

; =============================================================================
        bits    32
pm32:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     esp, 0x7C00
        xor     eax, eax
        mov     edi, HOST_IDT_PA
        mov     ecx, 0x1000 / 4
        rep     stosd
        mov     edi, HOST_PML4_PA
        mov     ecx, (EXIT_STACK_TOP - HOST_PML4_PA) / 4
        rep     stosd
        ; host paging: PML4 -> PDPT -> PDs of 2 MiB pages = 4 GiB identity
        ; (GiB 0 at HOST_PD_PA, GiB 1..3 at HOST_PD_HI_PA)
        mov     dword [HOST_PML4_PA], HOST_PDPT_PA | 3
        mov     dword [HOST_PDPT_PA], HOST_PD_PA | 3
        mov     dword [HOST_PDPT_PA + 8], (HOST_PD_HI_PA + 0x0000) | 3
        mov     dword [HOST_PDPT_PA + 16], (HOST_PD_HI_PA + 0x1000) | 3
        mov     dword [HOST_PDPT_PA + 24], (HOST_PD_HI_PA + 0x2000) | 3
        mov     edi, HOST_PD_PA
        mov     eax, 0x83
        mov     ecx, 512
.pd0:
        mov     [edi], eax
        add     eax, 0x200000
        add     edi, 8
        loop    .pd0
        mov     edi, HOST_PD_HI_PA
        mov     ecx, 1536
.pd1:
        mov     [edi], eax
        add     eax, 0x200000
        add     edi, 8
        loop    .pd1
        mov     eax, HOST_PML4_PA
        mov     cr3, eax
        mov     eax, cr4
        or      eax, 0x20               ; PAE
        mov     cr4, eax
        mov     ecx, 0xC0000080
        rdmsr
        or      eax, 0x100              ; EFER.LME
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000         ; PG
        mov     cr0, eax
        jmp     0x08:lm64

; =============================================================================
        bits    64
lm64:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     rsp, HOST_STACK_TOP
        lgdt    [rel gdt_desc64]
        mov     ax, 0x20
        ltr     ax
        call    build_idt
        PRINT   `\nVTDBGLAB start\n`
        call    vmx_init
        call    build_tables
        call    vmread_probe
        jmp     run_scenarios

; ------------------------------------------------------------ output --------
putc:                                   ; al
        push    rdx
        mov     dx, 0xE9
        out     dx, al
        pop     rdx
        ret

puts:                                   ; rsi -> NUL-terminated (rsi preserved)
        push    rax
        push    rsi
.l:
        lodsb
        test    al, al
        jz      .d
        call    putc
        jmp     .l
.d:
        pop     rsi
        pop     rax
        ret

strend:                                 ; rsi -> byte after the NUL
        push    rax
.l:
        lodsb
        test    al, al
        jnz     .l
        pop     rax
        ret

puthex:                                 ; rax value, ecx nibbles
        push    rax
        push    rbx
        push    rcx
        push    rdx
        mov     rdx, rax
        lea     rbx, [rel hexdigits]
.l:
        dec     ecx
        js      .d
        mov     rax, rdx
        push    rcx
        shl     ecx, 2
        shr     rax, cl
        pop     rcx
        and     eax, 0xF
        mov     al, [rbx + rax]
        call    putc
        jmp     .l
.d:
        pop     rdx
        pop     rcx
        pop     rbx
        pop     rax
        ret

hexdigits:      db '0123456789ABCDEF'

newline:
        PCHAR   10
        ret

; ------------------------------------------------------- fatal / IDT --------
fatal:
        PRINT   `FATAL\n`
.l:
        xchg    bx, bx
        jmp     .l

build_idt:
        mov     rdi, HOST_IDT_PA
        lea     rbx, [rel exc_stubs]
        mov     ecx, 32
.l:
        mov     rax, rbx
        mov     [rdi], ax
        mov     word [rdi + 2], 0x08
        mov     word [rdi + 4], 0x8E00
        shr     rax, 16
        mov     [rdi + 6], ax
        shr     rax, 16
        mov     [rdi + 8], eax
        mov     dword [rdi + 12], 0
        add     rdi, 16
        add     rbx, 16
        loop    .l
        lidt    [rel idt_desc]
        ret

idt_desc:
        dw      32 * 16 - 1
        dq      HOST_IDT_PA

        align   16
exc_stubs:
%assign v 0
%rep 32
        align   16
%if v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
%else
        push    0
%endif
        push    v
        jmp     exc_common
%assign v v + 1
%endrep

exc_common:
        pop     r8                      ; vector
        pop     r9                      ; error code
        mov     r10, [rsp]              ; faulting RIP
        PRINT   `HOSTEXC vec=`
        PHEX    r8, 2
        PRINT   ` err=`
        PHEX    r9, 8
        PRINT   ` rip=`
        PHEX    r10, 16
        PRINT   ` cr2=`
        mov     rax, cr2
        PHEX    rax, 16
        call    newline
        jmp     fatal

; ------------------------------------------------------- VMX helpers --------
vmw:                                    ; VMCS[edx] = rax, fatal on failure
        vmwrite rdx, rax
        jbe     .fail
        ret
.fail:
        pushfq
        PRINT   `VMWRITE FAIL enc=`
        PHEX    rdx, 4
        PRINT   ` val=`
        PHEX    rax, 16
        pop     rax
        PRINT   ` rflags=`
        PHEX    rax, 4
        mov     edx, 0x4400
        vmread  rax, rdx
        PRINT   ` err=`
        PHEX    rax, 8
        call    newline
        jmp     fatal

vmr:                                    ; rax = VMCS[edx], fatal on failure
        vmread  rax, rdx
        jbe     .fail
        ret
.fail:
        PRINT   `VMREAD FAIL enc=`
        PHEX    rdx, 4
        call    newline
        jmp     fatal

probe_index:                            ; edx = encoding -> rax = probe entry address
        mov     eax, edx
        and     eax, 0xFFF
        push    rdx
        shr     edx, 1
        and     edx, 0x3000
        or      eax, edx
        pop     rdx
        shl     rax, 4
        add     rax, PROBE_TABLE_PA
        ret

vmr_safe:                               ; rax = VMCS[edx] if the probe saw it supported, else 0
        call    probe_index
        cmp     dword [rax + 4], 0
        jne     .unsupported
        jmp     vmr
.unsupported:
        xor     eax, eax
        ret

vm_or:                                  ; VMCS[edx] |= rax
        push    rbx
        mov     rbx, rax
        call    vmr
        or      rax, rbx
        call    vmw
        pop     rbx
        ret

vm_andn:                                ; VMCS[edx] &= ~rax
        push    rbx
        mov     rbx, rax
        not     rbx
        call    vmr
        and     rax, rbx
        call    vmw
        pop     rbx
        ret

rdmsr64:                                ; rax = MSR[ecx]
        push    rdx
        rdmsr
        shl     rdx, 32
        or      rax, rdx
        pop     rdx
        ret

add_msr:                                ; append (ecx, MSR[ecx]) to the MSR table, rax = value
        call    rdmsr64
        push    rbx
        mov     rbx, [INFO_PA + INFO_MSR_N]
        shl     rbx, 4
        add     rbx, MSR_TABLE_PA
        mov     [rbx], rcx
        mov     [rbx + 8], rax
        inc     qword [INFO_PA + INFO_MSR_N]
        pop     rbx
        ret

adjust_ctl:                             ; eax = (eax | msr.lo) & msr.hi, msr in rdx
        push    rdx
        or      eax, edx
        shr     rdx, 32
        and     eax, edx
        pop     rdx
        ret

; ---------------------------------------------------------- VMX init --------
vmx_init:
        mov     eax, 1
        cpuid
        bt      ecx, 5
        jc      .has_vmx
        PRINT   `NO VMX\n`
        jmp     fatal
.has_vmx:
        mov     qword [rel maxphy], 36
        mov     eax, 0x80000000
        cpuid
        cmp     eax, 0x80000008
        jb      .phy_done
        mov     eax, 0x80000008
        cpuid
        and     eax, 0xFF
        mov     [rel maxphy], rax
.phy_done:
        mov     rax, [rel maxphy]
        mov     [INFO_PA + INFO_MAXPHY], rax
        mov     qword [INFO_PA + INFO_MSR_TABLE], MSR_TABLE_PA
        mov     qword [INFO_PA + INFO_MSR_N], 0
        ; IA32_FEATURE_CONTROL: lock with VMXON-outside-SMX if the BIOS did not
        mov     ecx, 0x3A
        call    rdmsr64
        test    eax, 1
        jnz     .locked
        or      eax, 5
        mov     rdx, rax
        shr     rdx, 32
        wrmsr
.locked:
        mov     ecx, 0x3A
        call    add_msr
        mov     ecx, 0x480
        call    add_msr
        mov     [rel msr_basic], rax
        mov     ecx, 0x481
        call    add_msr
        mov     [rel msr_pin], rax
        mov     ecx, 0x482
        call    add_msr
        mov     [rel msr_proc], rax
        mov     ecx, 0x483
        call    add_msr
        mov     [rel msr_exit], rax
        mov     ecx, 0x484
        call    add_msr
        mov     [rel msr_entry], rax
        mov     ecx, 0x485
        call    add_msr
        mov     [rel msr_misc], rax
        mov     ecx, 0x486
        call    add_msr
        mov     [rel cr0_fixed0], rax
        mov     ecx, 0x487
        call    add_msr
        mov     [rel cr0_fixed1], rax
        mov     ecx, 0x488
        call    add_msr
        mov     [rel cr4_fixed0], rax
        mov     ecx, 0x489
        call    add_msr
        mov     [rel cr4_fixed1], rax
        mov     ecx, 0x48A
        call    add_msr
        ; optional MSRs, only where the SDM says they exist
        mov     qword [rel msr_proc2], 0
        mov     qword [rel msr_eptcap], 0
        bt      qword [rel msr_proc], 63
        jnc     .no_proc2
        mov     ecx, 0x48B
        call    add_msr
        mov     [rel msr_proc2], rax
        bt      rax, 33                 ; enable EPT allowed
        jc      .eptcap
        bt      rax, 37                 ; enable VPID allowed
        jnc     .no_eptcap
.eptcap:
        mov     ecx, 0x48C
        call    add_msr
        mov     [rel msr_eptcap], rax
.no_eptcap:
.no_proc2:
        bt      qword [rel msr_basic], 55
        jnc     .no_true
        mov     ecx, 0x48D
        call    add_msr
        mov     [rel msr_pin], rax
        mov     ecx, 0x48E
        call    add_msr
        mov     [rel msr_proc], rax
        mov     ecx, 0x48F
        call    add_msr
        mov     [rel msr_exit], rax
        mov     ecx, 0x490
        call    add_msr
        mov     [rel msr_entry], rax
.no_true:
        bt      qword [rel msr_proc2], 45       ; enable VM functions allowed
        jnc     .no_vmfunc
        mov     ecx, 0x491
        call    add_msr
.no_vmfunc:
        bt      qword [rel msr_proc], 49        ; activate tertiary controls allowed
        jnc     .no_proc3
        mov     ecx, 0x492
        call    add_msr
.no_proc3:
        bt      qword [rel msr_exit], 63        ; activate secondary exit controls allowed
        jnc     .no_exit2
        mov     ecx, 0x493
        call    add_msr
.no_exit2:
        ; CR0 / CR4 for VMX operation
        mov     rax, cr0
        or      rax, [rel cr0_fixed0]
        and     rax, [rel cr0_fixed1]
        mov     cr0, rax
        mov     rax, cr4
        or      rax, 0x2000
        or      rax, [rel cr4_fixed0]
        and     rax, [rel cr4_fixed1]
        mov     cr4, rax
        ; revision id
        mov     rax, [rel msr_basic]
        and     eax, 0x7FFFFFFF
        mov     [rel revision], rax
        mov     [INFO_PA + INFO_REVISION], rax
        mov     [VMXON_PA], eax
        PRINT   `REVISION `
        PHEX    rax, 8
        call    newline
        vmxon   [rel vmxon_ptr]
        jbe     .vmxon_fail
        PRINT   `VMXON ok\n`
        ; controls: (desired | allowed0) & allowed1
        mov     eax, (1 << 0)                                   ; external-interrupt exiting
        mov     rdx, [rel msr_pin]
        call    adjust_ctl
        mov     [rel ctl_pin], rax
        mov     eax, (1 << 7) | (1 << 9) | (1 << 12) | (1 << 15) | (1 << 20) | (1 << 23) | (1 << 25) | (1 << 28) | (1 << 31)
        mov     rdx, [rel msr_proc]
        call    adjust_ctl
        mov     [rel ctl_proc], rax
        xor     eax, eax
        bt      dword [rel ctl_proc], 31
        jnc     .no2
        mov     eax, (1 << 1)                                   ; enable EPT
        mov     rdx, [rel msr_proc2]
        call    adjust_ctl
.no2:
        mov     [rel ctl_proc2], rax
        mov     eax, (1 << 9) | (1 << 15)                       ; 64-bit host, ack interrupt on exit
        mov     rdx, [rel msr_exit]
        call    adjust_ctl
        mov     [rel ctl_exit], rax
        mov     eax, (1 << 9)                                   ; IA-32e mode guest
        mov     rdx, [rel msr_entry]
        call    adjust_ctl
        mov     [rel ctl_entry], rax
        ; features the guest may rely on
        xor     ebx, ebx
        mov     eax, [rel ctl_proc]
        bt      eax, 28
        jnc     .f1
        or      ebx, F_MSR
.f1:    bt      eax, 25
        jnc     .f2
        or      ebx, F_IO
.f2:    bt      eax, 15
        jnc     .f3
        or      ebx, F_CR3
.f3:    bt      eax, 20
        jnc     .f4
        or      ebx, F_CR8
.f4:    bt      eax, 23
        jnc     .f5
        or      ebx, F_DR
.f5:    bt      eax, 9
        jnc     .f6
        or      ebx, F_INVLPG
.f6:    bt      eax, 12
        jnc     .f7
        or      ebx, F_RDTSC
.f7:    bt      eax, 7
        jnc     .f8
        or      ebx, F_HLT
.f8:    bt      eax, 31
        jnc     .f10
        or      ebx, F_SECONDARY
        bt      dword [rel ctl_proc2], 1
        jnc     .f10
        or      ebx, F_EPT
.f10:   bt      dword [rel ctl_pin], 0
        jnc     .f11
        bt      dword [rel ctl_exit], 15
        jnc     .f11
        or      ebx, F_EXTINT
.f11:
        mov     [rel features], rbx
        mov     [INFO_PA + INFO_FEATURES], rbx
        ; local APIC software enable (the self-IPI for the external-interrupt exit)
        mov     rax, LAPIC_PA
        mov     dword [rax + 0xF0], 0x1FF
        ret
.vmxon_fail:
        PRINT   `VMXON FAIL\n`
        jmp     fatal

; ----------------------------------------------- bitmaps / page tables ------
build_tables:
        ; MSR bitmap: RDMSR 0x174 (read-low) and WRMSR 0xC0000102 (write-high) exit
        or      byte [MSR_BITMAP_PA + 0x174 / 8], 1 << (0x174 % 8)
        or      byte [MSR_BITMAP_PA + 3072 + 0x102 / 8], 1 << (0x102 % 8)
        ; I/O bitmaps: port 0x71 (bitmap A) and port 0x9000 (bitmap B)
        or      byte [IO_BITMAP_A_PA + 0x71 / 8], 1 << (0x71 % 8)
        or      byte [IO_BITMAP_B_PA + 0x1000 / 8], 1 << (0x1000 % 8)
        ; guest paging: 1 GiB identity with 2 MiB pages, PF_HOLE_GLA not present
        mov     qword [GUEST_PML4_PA], GUEST_PDPT_PA | 3
        mov     qword [GUEST_PDPT_PA], GUEST_PD_PA | 3
        mov     rdi, GUEST_PD_PA
        mov     eax, 0x83
        mov     ecx, 512
.gpd:
        mov     [rdi], rax
        add     rax, 0x200000
        add     rdi, 8
        loop    .gpd
        mov     qword [GUEST_PD_PA + (PF_HOLE_GLA >> 21) * 8], 0
        ; EPT: 1 GiB identity with 2 MiB pages (RWX, WB), EPT_HOLE_GPA not present
        mov     qword [EPT_PML4_PA], EPT_PDPT_PA | 7
        mov     qword [EPT_PDPT_PA], EPT_PD_PA | 7
        mov     rdi, EPT_PD_PA
        mov     eax, 0xB7
        mov     ecx, 512
.epd:
        mov     [rdi], rax
        add     rax, 0x200000
        add     rdi, 8
        loop    .epd
        mov     qword [EPT_PD_PA + (EPT_HOLE_GPA >> 21) * 8], 0
        ; MSR-load areas used by the scenarios
        mov     dword [MSR_AREA_PA + 0x00], 0x174               ; x2apic scenario: entry 1 valid
        mov     dword [MSR_AREA_PA + 0x10], 0x808               ;                  entry 2 x2APIC TPR
        mov     dword [MSR_AREA_PA + 0x100], 0xC0000100         ; FS_BASE scenario
        mov     dword [MSR_AREA_PA + 0x200], 0x174              ; reserved-bits scenario
        mov     dword [MSR_AREA_PA + 0x204], 1
        ; zero the scenario VMCS regions, their save areas and the probe table
        mov     rdi, SCEN_VMCS_BASE
        mov     ecx, (PROBE_TABLE_PA + PROBE_ENTRIES * 16 - SCEN_VMCS_BASE) / 8
        xor     eax, eax
        rep     stosq
        ; info block
        mov     rax, 'VTDBGLAB'
        mov     [INFO_PA + INFO_MAGIC], rax
        mov     qword [INFO_PA + INFO_VERSION], 1
        mov     qword [INFO_PA + INFO_VMXON], VMXON_PA
        mov     qword [INFO_PA + INFO_VMCS], VMCS_PA
        mov     qword [INFO_PA + INFO_EXIT_LOG], EXIT_LOG_PA
        mov     qword [INFO_PA + INFO_EXIT_RECSZ], EXIT_REC_SIZE
        mov     qword [INFO_PA + INFO_PROBE], PROBE_TABLE_PA
        mov     qword [INFO_PA + INFO_PROBE_N], PROBE_ENTRIES
        mov     qword [INFO_PA + INFO_SCEN_VMCS], SCEN_VMCS_BASE
        mov     qword [INFO_PA + INFO_SCEN_SAVE], SCEN_SAVE_BASE
        mov     qword [INFO_PA + INFO_SCEN_RES], SCEN_RES_PA
        mov     rax, cr3
        mov     [INFO_PA + INFO_HOST_CR3], rax
        mov     qword [INFO_PA + INFO_GUEST_CR3], GUEST_PML4_PA
        mov     qword [INFO_PA + INFO_GUEST_PML4], GUEST_PML4_PA
        mov     qword [INFO_PA + INFO_EPT_PML4], EPT_PML4_PA
        mov     qword [INFO_PA + INFO_HOST_PML4], HOST_PML4_PA
        mov     qword [INFO_PA + INFO_MSR_BITMAP], MSR_BITMAP_PA
        mov     qword [INFO_PA + INFO_IO_A], IO_BITMAP_A_PA
        mov     qword [INFO_PA + INFO_IO_B], IO_BITMAP_B_PA
        lea     rax, [rel guest_entry]
        mov     [INFO_PA + INFO_GUEST_RIP0], rax
        lea     rax, [rel exit_handler]
        mov     [INFO_PA + INFO_HOST_RIP], rax
        mov     rax, [rel ctl_pin]
        mov     [INFO_PA + INFO_PIN], rax
        mov     rax, [rel ctl_proc]
        mov     [INFO_PA + INFO_PROC], rax
        mov     rax, [rel ctl_proc2]
        mov     [INFO_PA + INFO_PROC2], rax
        mov     rax, [rel ctl_exit]
        mov     [INFO_PA + INFO_EXIT_CTL], rax
        mov     rax, [rel ctl_entry]
        mov     [INFO_PA + INFO_ENTRY_CTL], rax
        mov     rax, EPT_PML4_PA | (3 << 3) | 6
        test    qword [rel features], F_EPT
        jnz     .has_ept
        xor     eax, eax
.has_ept:
        mov     [rel eptp], rax
        mov     [INFO_PA + INFO_EPTP], rax
        ret

; -------------------------------------------------------- VMREAD probe ------
; Every (width, type, index, high) encoding, read on a scratch VMCS.  The
; entry is {u32 encoding, u32 status (0 ok, VM-instruction error, or
; 0xFFFFFFFF for VMfailInvalid), u64 value}.  Only this VMCS ever sees a
; failing VMREAD, so VM_INSTRUCTION_ERROR of the other VMCSs stays clean.
vmread_probe:
        mov     eax, [rel revision]
        mov     [PROBE_VMCS_PA], eax
        vmclear [rel probe_ptr]
        jbe     .fail
        vmptrld [rel probe_ptr]
        jbe     .fail
        xor     r12d, r12d
        mov     rdi, PROBE_TABLE_PA
        xor     r13d, r13d
.l:
        mov     eax, r12d
        and     eax, 0xFFF
        mov     edx, r12d
        and     edx, 0x3000
        shl     edx, 1
        or      edx, eax
        mov     [rdi], edx
        xor     eax, eax
        vmread  rax, rdx
        jc      .invalid
        jz      .valid_fail
        mov     dword [rdi + 4], 0
        mov     [rdi + 8], rax
        inc     r13d
        jmp     .next
.valid_fail:
        mov     ecx, 0x4400
        vmread  rax, rcx
        mov     [rdi + 4], eax
        mov     qword [rdi + 8], 0
        jmp     .next
.invalid:
        mov     dword [rdi + 4], 0xFFFFFFFF
        mov     qword [rdi + 8], 0
.next:
        add     rdi, 16
        inc     r12d
        cmp     r12d, PROBE_ENTRIES
        jb      .l
        mov     [INFO_PA + INFO_SUPPORTED], r13
        vmclear [rel probe_ptr]
        PRINT   `PROBE supported=`
        PHEX    r13, 4
        call    newline
        ret
.fail:
        PRINT   `PROBE VMCS FAIL\n`
        jmp     fatal

; scan_print: VMREAD every supported encoding of the current VMCS and print
; "<prefix>[<id> ]<enc> <value>".  rsi = prefix, r13 = id string or 0.
scan_print:
        push    r12
        push    r14
        push    r15
        xor     r12d, r12d
        mov     r14, PROBE_TABLE_PA
.l:
        cmp     dword [r14 + 4], 0
        jne     .skip
        mov     edx, [r14]
        vmread  rax, rdx
        jbe     .fail
        mov     r15, rax
        call    puts
        test    r13, r13
        jz      .noid
        push    rsi
        mov     rsi, r13
        call    puts
        pop     rsi
        PCHAR   ' '
.noid:
        PHEX    rdx, 4
        PCHAR   ' '
        PHEX    r15, 16
        call    newline
.skip:
        add     r14, 16
        inc     r12d
        cmp     r12d, PROBE_ENTRIES
        jb      .l
        pop     r15
        pop     r14
        pop     r12
        ret
.fail:
        PRINT   `SCANFAIL `
        PHEX    rdx, 4
        call    newline
        jmp     .skip

; ------------------------------------------------------ baseline VMCS -------
; The valid baseline for the current VMCS (callers set HOST_RIP/RSP, GUEST_RIP).
setup_baseline:
        ; controls
        VMW     0x4000, [rel ctl_pin]
        VMW     0x4002, [rel ctl_proc]
        test    qword [rel features], F_SECONDARY
        jz      .no_proc2
        VMW     0x401E, [rel ctl_proc2]
.no_proc2:
        VMW     0x4004, 0xFFFFFFFF              ; exception bitmap: every exception exits
        VMW     0x4006, 0                       ; #PF error-code mask
        VMW     0x4008, 0                       ; #PF error-code match
        VMW     0x400A, 0                       ; CR3-target count
        VMW     0x400C, [rel ctl_exit]
        VMW     0x400E, 0                       ; VM-exit MSR-store count
        VMW     0x4010, 0                       ; VM-exit MSR-load count
        VMW     0x4012, [rel ctl_entry]
        VMW     0x4014, 0                       ; VM-entry MSR-load count
        VMW     0x4016, 0                       ; VM-entry interruption info
        VMW     0x4018, 0
        VMW     0x401A, 0
        VMW     0x2000, IO_BITMAP_A_PA
        VMW     0x2002, IO_BITMAP_B_PA
        VMW     0x2004, MSR_BITMAP_PA
        VMW     0x2010, 0                       ; TSC offset
        test    qword [rel features], F_EPT
        jz      .no_ept
        VMW     0x201A, [rel eptp]
.no_ept:
        VMW     0x6000, 0                       ; CR0 guest/host mask
        VMW     0x6002, 0x2000                  ; CR4 guest/host mask: VMXE
        mov     rax, cr0
        VMW     0x6004, rax                     ; CR0 read shadow
        mov     rax, cr4
        and     rax, ~0x2000
        VMW     0x6006, rax                     ; CR4 read shadow (VMXE hidden)
        ; host state
        VMW     0x0C00, 0x10
        VMW     0x0C02, 0x08
        VMW     0x0C04, 0x10
        VMW     0x0C06, 0x10
        VMW     0x0C08, 0x10
        VMW     0x0C0A, 0x10
        VMW     0x0C0C, 0x20
        mov     rax, cr0
        VMW     0x6C00, rax
        mov     rax, cr3
        VMW     0x6C02, rax
        mov     rax, cr4
        VMW     0x6C04, rax
        VMW     0x6C06, 0                       ; FS base
        VMW     0x6C08, 0                       ; GS base
        VMW     0x6C0A, TSS_PA
        lea     rax, [rel gdt]
        VMW     0x6C0C, rax
        VMW     0x6C0E, HOST_IDT_PA
        VMW     0x6C10, 0
        VMW     0x6C12, 0
        VMW     0x4C00, 0
        VMW     0x6C14, EXIT_STACK_TOP
        lea     rax, [rel exit_handler]
        VMW     0x6C16, rax
        ; guest state: 64-bit flat ring 0
        VMW     0x0800, 0x10
        VMW     0x0802, 0x08
        VMW     0x0804, 0x10
        VMW     0x0806, 0x10
        VMW     0x0808, 0x10
        VMW     0x080A, 0x10
        VMW     0x080C, 0
        VMW     0x080E, 0x20
        VMW     0x4800, 0xFFFFFFFF
        VMW     0x4802, 0xFFFFFFFF
        VMW     0x4804, 0xFFFFFFFF
        VMW     0x4806, 0xFFFFFFFF
        VMW     0x4808, 0xFFFFFFFF
        VMW     0x480A, 0xFFFFFFFF
        VMW     0x480C, 0
        VMW     0x480E, 0x67
        VMW     0x4810, gdt_end - gdt - 1
        VMW     0x4812, 0
        VMW     0x4814, 0xC093
        VMW     0x4816, 0xA09B
        VMW     0x4818, 0xC093
        VMW     0x481A, 0xC093
        VMW     0x481C, 0xC093
        VMW     0x481E, 0xC093
        VMW     0x4820, 0x10000                 ; LDTR unusable
        VMW     0x4822, 0x8B                    ; busy 64-bit TSS
        VMW     0x6806, 0
        VMW     0x6808, 0
        VMW     0x680A, 0
        VMW     0x680C, 0
        VMW     0x680E, 0
        VMW     0x6810, 0
        VMW     0x6812, 0
        VMW     0x6814, TSS_PA
        lea     rax, [rel gdt]
        VMW     0x6816, rax
        VMW     0x6818, 0
        mov     rax, cr0
        VMW     0x6800, rax
        VMW     0x6802, GUEST_PML4_PA
        mov     rax, cr4
        VMW     0x6804, rax
        VMW     0x681A, 0x400
        VMW     0x681C, GUEST_STACK_TOP
        lea     rax, [rel guest_entry]
        VMW     0x681E, rax
        VMW     0x6820, 0x2
        VMW     0x6822, 0
        VMW     0x6824, 0
        VMW     0x6826, 0
        VMW     0x482A, 0
        VMW     0x4824, 0
        VMW     0x4826, 0
        VMW     0x2802, 0
        VMW     0x2800, -1                      ; VMCS link pointer
        ret

; ========================================================== scenarios =======
run_scenarios:
        mov     qword [rel scen_index], 0
        lea     rax, [rel scen_list]
        mov     [rel scen_rec], rax
%ifdef SMP
        jmp     .done                           ; the 2-CPU variant skips the scenarios
%endif
.next:
        mov     rsp, HOST_STACK_TOP
        mov     rbx, [rel scen_rec]
        cmp     qword [rbx], 0
        je      .done
        mov     rax, [rel scen_index]
        cmp     rax, MAX_SCEN
        jae     .done
        shl     rax, 12
        add     rax, SCEN_VMCS_BASE
        mov     [rel scen_ptr], rax
        mov     rdi, rax
        mov     ecx, 512
        xor     eax, eax
        rep     stosq
        mov     eax, [rel revision]
        mov     rdi, [rel scen_ptr]
        mov     [rdi], eax
        vmclear [rel scen_ptr]
        jbe     .vmcs_fail
        vmptrld [rel scen_ptr]
        jbe     .vmcs_fail
        call    setup_baseline
        VMW     0x6C16, scen_exit
        VMW     0x6C14, SCEN_STACK_TOP
        VMW     0x681E, scen_guest
        mov     qword [rel scen_skip], 0
        ; strings
        mov     rbx, [rel scen_rec]
        lea     rsi, [rbx + 40]
        mov     [rel scen_id], rsi
        call    strend
        mov     [rel scen_rule], rsi
        call    strend
        mov     [rel scen_desc], rsi
        ; requirements
        test    qword [rbx + 16], FL_NEED_EPT
        jz      .req_ok
        test    qword [rel features], F_EPT
        jnz     .req_ok
        mov     qword [rel scen_skip], 1
        jmp     .applied
.req_ok:
        ; break exactly one rule
        mov     rax, [rbx + 8]
        test    rax, rax
        jz      .generic
        call    rax
        jmp     .applied
.generic:
        mov     edx, [rbx + 24]
        mov     rax, [rbx + 32]
        test    qword [rbx + 16], FL_OR
        jz      .not_or
        call    vm_or
        jmp     .applied
.not_or:
        test    qword [rbx + 16], FL_ANDN
        jz      .plain
        call    vm_andn
        jmp     .applied
.plain:
        call    vmw
.applied:
        PRINT   `SCENARIO `
        PHEX    [rel scen_index], 2
        PCHAR   ' '
        mov     rsi, [rel scen_id]
        call    puts
        PCHAR   ' '
        mov     rsi, [rel scen_rule]
        call    puts
        PCHAR   ' '
        PHEX    [rel scen_ptr], 8
        PCHAR   ' '
        mov     rsi, [rel scen_desc]
        call    puts
        call    newline
        cmp     qword [rel scen_skip], 0
        je      .run
        mov     qword [rel scen_result], R_SKIPPED
        mov     qword [rel scen_err], 0
        mov     qword [rel scen_reason], 0
        mov     qword [rel scen_qual], 0
        jmp     scen_record
.run:
        ; pre-launch copy of the whole VMCS page (Bochs memory is authoritative)
        mov     rsi, [rel scen_ptr]
        mov     rdi, [rel scen_index]
        shl     rdi, 12
        add     rdi, SCEN_SAVE_BASE
        mov     ecx, 512
        rep     movsq
        lea     rsi, [rel str_sf]
        mov     r13, [rel scen_id]
        call    scan_print
        ; marker in bochs.log: a failing VMREAD of encoding 0x1000 + index on the
        ; probe VMCS (the scenario VMCS itself is not touched)
        vmptrld [rel probe_ptr]
        jbe     .vmcs_fail
        mov     rdx, [rel scen_index]
        or      edx, 0x1000
        vmread  rax, rdx
        vmptrld [rel scen_ptr]
        jbe     .vmcs_fail
        mov     rbx, [rel scen_rec]
        mov     rbx, [rbx + 16]
        test    rbx, FL_VMCLEAR
        jz      .no_clear
        vmclear [rel scen_ptr]
.no_clear:
        test    rbx, FL_VMRESUME
        jz      .no_resume
        vmresume
        jmp     .failed
.no_resume:
        test    rbx, FL_MOVSS
        jz      .no_movss
        mov     ax, ss
        mov     ss, ax
        vmlaunch
        jmp     .failed
.no_movss:
        vmlaunch
.failed:
        pushfq
        pop     rax
        mov     qword [rel scen_err], 0
        mov     qword [rel scen_reason], 0
        mov     qword [rel scen_qual], 0
        test    eax, 1                          ; CF
        jz      .not_invalid
        mov     qword [rel scen_result], R_VMFAIL_INVALID
        jmp     scen_record
.not_invalid:
        test    eax, 0x40                       ; ZF
        jz      .anomaly
        mov     qword [rel scen_result], R_VMFAIL_VALID
        VMR     0x4400
        mov     [rel scen_err], rax
        jmp     scen_record
.anomaly:
        mov     qword [rel scen_result], R_ANOMALY
        jmp     scen_record
.vmcs_fail:
        PRINT   `SCENARIO VMCS FAIL\n`
        jmp     fatal
.done:
        mov     rax, [rel scen_index]
        mov     [INFO_PA + INFO_SCEN_N], rax
        PRINT   `SCENARIOS done count=`
        PHEX    rax, 2
        call    newline
        vmptrld [rel probe_ptr]                 ; end marker in bochs.log
        jbe     .vmcs_fail
        mov     edx, 0x1000 | MAX_SCEN
        vmread  rax, rdx
        vmclear [rel probe_ptr]
        mov     qword [INFO_PA + INFO_CPUS], 1
%ifdef SMP
        call    start_ap
%endif
        jmp     main_run

; HOST_RIP of every scenario VMCS: a VM-entry failure, or an exit of a guest
; that was entered although the scenario expected a failure.
scen_exit:
        mov     rsp, HOST_STACK_TOP
        VMR     0x4402
        mov     [rel scen_reason], rax
        VMR     0x6400
        mov     [rel scen_qual], rax
        mov     qword [rel scen_err], 0
        mov     qword [rel scen_result], R_OK
        bt      dword [rel scen_reason], 31
        jnc     scen_record
        mov     qword [rel scen_result], R_ENTRY_FAILURE
        ; fall through
scen_record:
        mov     rsp, HOST_STACK_TOP
        mov     rdi, [rel scen_index]
        shl     rdi, 5
        add     rdi, SCEN_RES_PA
        mov     rax, [rel scen_result]
        mov     [rdi], rax
        mov     rax, [rel scen_err]
        mov     [rdi + 8], rax
        mov     rax, [rel scen_reason]
        mov     [rdi + 16], rax
        mov     rax, [rel scen_qual]
        mov     [rdi + 24], rax
        PRINT   `OUTCOME `
        PHEX    [rel scen_index], 2
        PCHAR   ' '
        mov     rsi, [rel scen_id]
        call    puts
        mov     rax, [rel scen_result]
        lea     rsi, [rel str_r_invalid]
        cmp     eax, R_VMFAIL_INVALID
        je      .name
        lea     rsi, [rel str_r_valid]
        cmp     eax, R_VMFAIL_VALID
        je      .name
        lea     rsi, [rel str_r_entry]
        cmp     eax, R_ENTRY_FAILURE
        je      .name
        lea     rsi, [rel str_r_ok]
        cmp     eax, R_OK
        je      .name
        lea     rsi, [rel str_r_skipped]
        cmp     eax, R_SKIPPED
        je      .name
        lea     rsi, [rel str_r_anomaly]
.name:
        PCHAR   ' '
        call    puts
        PRINT   ` err=`
        PHEX    [rel scen_err], 8
        PRINT   ` reason=`
        PHEX    [rel scen_reason], 8
        PRINT   ` qual=`
        PHEX    [rel scen_qual], 16
        call    newline
        inc     qword [rel scen_index]
        mov     rbx, [rel scen_rec]
        mov     rax, [rbx]
        mov     [rel scen_rec], rax
        jmp     run_scenarios.next

scen_guest:
        vmcall
        jmp     scen_guest

; --- apply functions (current VMCS = the scenario's baseline) ---------------
ap_pin_reserved:
        mov     rax, [rel msr_pin]
        shr     rax, 32
        not     eax
        bsf     ecx, eax
        jz      ap_skip
        mov     eax, 1
        shl     eax, cl
        mov     edx, 0x4000
        jmp     vm_or

ap_proc_must1:
        mov     eax, [rel msr_proc]
        bsf     ecx, eax
        jz      ap_skip
        mov     eax, 1
        shl     eax, cl
        mov     edx, 0x4002
        jmp     vm_andn

ap_proc2_reserved:
        test    qword [rel features], F_SECONDARY
        jz      ap_skip
        mov     rax, [rel msr_proc2]
        shr     rax, 32
        not     eax
        bsf     ecx, eax
        jz      ap_skip
        mov     eax, 1
        shl     eax, cl
        mov     edx, 0x401E
        jmp     vm_or

ap_exit_must1:
        mov     eax, [rel msr_exit]
        bsf     ecx, eax
        jz      ap_skip
        mov     eax, 1
        shl     eax, cl
        mov     edx, 0x400C
        jmp     vm_andn

ap_entry_reserved:
        mov     rax, [rel msr_entry]
        shr     rax, 32
        not     eax
        bsf     ecx, eax
        jz      ap_skip
        mov     eax, 1
        shl     eax, cl
        mov     edx, 0x4012
        jmp     vm_or

ap_skip:
        mov     qword [rel scen_skip], 1
        ret

ap_msr_bitmap_maxphy:
        mov     rcx, [rel maxphy]
        mov     eax, 1
        shl     rax, cl
        mov     edx, 0x2004
        jmp     vmw

ap_host_cr3_maxphy:
        mov     rcx, [rel maxphy]
        mov     eax, 1
        shl     rax, cl
        mov     edx, 0x6C02
        jmp     vm_or

ap_guest_cr3_maxphy:
        mov     rcx, [rel maxphy]
        mov     eax, 1
        shl     rax, cl
        mov     edx, 0x6802
        jmp     vm_or

%macro REQUIRE_ALLOWED1 2               ; msr variable, bit (of the 64-bit MSR)
        bt      qword [rel %1], %2
        jnc     ap_skip
%endmacro

ap_vapic_unaligned:
        REQUIRE_ALLOWED1 msr_proc, 32 + 21
        VMW     0x2012, VAPIC_PA + 0x80
        mov     eax, 1 << 21
        mov     edx, 0x4002
        jmp     vm_or

ap_tpr_threshold:
        REQUIRE_ALLOWED1 msr_proc, 32 + 21
        VMW     0x2012, VAPIC_PA
        VMW     0x401C, 0x10
        mov     eax, 1 << 21
        mov     edx, 0x4002
        jmp     vm_or

ap_vnmi:
        REQUIRE_ALLOWED1 msr_pin, 32 + 5
        mov     eax, 1 << 3
        mov     edx, 0x4000
        call    vm_andn
        mov     eax, 1 << 5
        mov     edx, 0x4000
        jmp     vm_or

ap_vpid_zero:
        test    qword [rel features], F_SECONDARY
        jz      ap_skip
        REQUIRE_ALLOWED1 msr_proc2, 32 + 5
        VMW     0x0000, 0
        mov     eax, 1 << 5
        mov     edx, 0x401E
        jmp     vm_or

ap_urg_no_ept:
        test    qword [rel features], F_SECONDARY
        jz      ap_skip
        REQUIRE_ALLOWED1 msr_proc2, 32 + 7
        mov     eax, 1 << 1
        mov     edx, 0x401E
        call    vm_andn
        mov     eax, 1 << 7
        mov     edx, 0x401E
        jmp     vm_or

ap_entry_msr_unaligned:
        VMW     0x200A, MSR_AREA_PA + 8
        VMW     0x4014, 1
        ret

ap_exit_msr_store_unaligned:
        VMW     0x2006, MSR_AREA_PA + 4
        VMW     0x400E, 1
        ret

ap_preempt_save:
        REQUIRE_ALLOWED1 msr_exit, 32 + 22
        mov     eax, 1 << 22
        mov     edx, 0x400C
        jmp     vm_or

ap_pg_without_pe:
        test    qword [rel features], F_EPT
        jz      ap_skip
        REQUIRE_ALLOWED1 msr_proc2, 32 + 7
        mov     eax, 1 << 7
        mov     edx, 0x401E
        call    vm_or
        mov     eax, 1
        mov     edx, 0x6800
        jmp     vm_andn

ap_efer_lma:
        REQUIRE_ALLOWED1 msr_entry, 32 + 15
        VMW     0x2806, 0
        mov     eax, 1 << 15
        mov     edx, 0x4012
        jmp     vm_or

ap_efer_lme:
        REQUIRE_ALLOWED1 msr_entry, 32 + 15
        VMW     0x2806, 0x400
        mov     eax, 1 << 15
        mov     edx, 0x4012
        jmp     vm_or

ap_ss_dpl_rpl:
        VMW     0x4816, 0xA0FB
        VMW     0x4818, 0xC0F3
        ret

ap_sti_movss:
        VMW     0x6820, 0x202
        VMW     0x4824, 3
        ret

ap_msr_load_x2apic:
        VMW     0x200A, MSR_AREA_PA
        VMW     0x4014, 2
        ret

ap_msr_load_fs_base:
        VMW     0x200A, MSR_AREA_PA + 0x100
        VMW     0x4014, 1
        ret

ap_msr_load_rsvd:
        VMW     0x200A, MSR_AREA_PA + 0x200
        VMW     0x4014, 1
        ret

; --- the scenario list (stable ids; rule ids from vmentry-checks.md) --------
scen_list:
        SCEN "pin_reserved_bit_set", "CTL-PIN-RESERVED", 0, ap_pin_reserved, 0, 0, "pin-based controls: lowest bit whose allowed-1 setting is 0 set"
        SCEN "proc_must_be_one_cleared", "CTL-PROC-RESERVED", 0, ap_proc_must1, 0, 0, "primary processor-based controls: lowest must-be-1 bit (TRUE MSR) cleared"
        SCEN "proc2_reserved_bit_set", "CTL-PROC2-RESERVED", 0, ap_proc2_reserved, 0, 0, "secondary controls: lowest bit not allowed by IA32_VMX_PROCBASED_CTLS2 set"
        SCEN "exit_must_be_one_cleared", "CTL-EXIT-RESERVED", 0, ap_exit_must1, 0, 0, "VM-exit controls: lowest must-be-1 bit (TRUE MSR) cleared"
        SCEN "entry_reserved_bit_set", "CTL-ENTRY-RESERVED", 0, ap_entry_reserved, 0, 0, "VM-entry controls: lowest bit whose allowed-1 setting is 0 set"
        SCEN "cr3_target_count_5", "CTL-CR3-TARGET-COUNT", 0, 0, 0x400A, 5, "CR3-target count 5 (> 4)"
        SCEN "io_bitmap_a_unaligned", "CTL-IO-BITMAP-ADDR", 0, 0, 0x2000, IO_BITMAP_A_PA + 0x10, "I/O bitmap A address not 4 KiB aligned"
        SCEN "msr_bitmap_beyond_maxphyaddr", "CTL-MSR-BITMAP-ADDR", 0, ap_msr_bitmap_maxphy, 0, 0, "MSR bitmap address = 1 << MAXPHYADDR"
        SCEN "vapic_addr_unaligned", "CTL-VAPIC-ADDR", 0, ap_vapic_unaligned, 0, 0, "use TPR shadow with a virtual-APIC address not 4 KiB aligned"
        SCEN "tpr_threshold_bits_31_4", "CTL-TPR-THRESHOLD-RSVD", 0, ap_tpr_threshold, 0, 0, "use TPR shadow, no VID, TPR threshold 0x10"
        SCEN "virtual_nmi_without_nmi_exiting", "CTL-VNMI-NEEDS-NMI-EXITING", 0, ap_vnmi, 0, 0, "virtual NMIs set, NMI exiting clear"
        SCEN "vpid_zero", "CTL-VPID-ZERO", 0, ap_vpid_zero, 0, 0, "enable VPID with VPID 0"
        SCEN "eptp_memtype_2", "CTL-EPTP-MEMTYPE", FL_NEED_EPT, 0, 0x201A, EPT_PML4_PA | (3 << 3) | 2, "EPTP memory type 2 (reserved)"
        SCEN "eptp_walk_length_2", "CTL-EPTP-WALK-LENGTH", FL_NEED_EPT, 0, 0x201A, EPT_PML4_PA | (1 << 3) | 6, "EPTP page-walk length field 1 (2-level walk)"
        SCEN "eptp_reserved_bits", "CTL-EPTP-RESERVED", FL_NEED_EPT, 0, 0x201A, EPT_PML4_PA | 0x100 | (3 << 3) | 6, "EPTP bit 8 (reserved) set"
        SCEN "unrestricted_guest_without_ept", "CTL-URG-NEEDS-EPT", 0, ap_urg_no_ept, 0, 0, "unrestricted guest set, enable EPT clear"
        SCEN "save_preemption_timer_without_activate", "CTL-EXIT-PREEMPT-SAVE", 0, ap_preempt_save, 0, 0, "save VMX-preemption timer set, activate timer clear"
        SCEN "exit_msr_store_addr_unaligned", "CTL-EXIT-MSR-STORE-ADDR", 0, ap_exit_msr_store_unaligned, 0, 0, "VM-exit MSR-store count 1, address not 16-byte aligned"
        SCEN "entry_msr_load_addr_unaligned", "CTL-ENTRY-MSR-LOAD-ADDR", 0, ap_entry_msr_unaligned, 0, 0, "VM-entry MSR-load count 1, address not 16-byte aligned"
        SCEN "event_injection_type_1", "CTL-EVENT-TYPE", 0, 0, 0x4016, 0x80000100, "VM-entry interruption info valid with reserved type 1"
        SCEN "event_injection_nmi_vector_3", "CTL-EVENT-VECTOR", 0, 0, 0x4016, 0x80000203, "VM-entry interruption info: NMI with vector 3"
        SCEN "event_injection_reserved_bits", "CTL-EVENT-RESERVED", 0, 0, 0x4016, 0x80001030, "VM-entry interruption info bit 12 (reserved) set, external interrupt 0x30"
        SCEN "host_cr0_pe_clear", "HOST-CR0-FIXED", FL_ANDN, 0, 0x6C00, 1, "host CR0.PE clear (CR0_FIXED0)"
        SCEN "host_cr4_vmxe_clear", "HOST-CR4-FIXED", FL_ANDN, 0, 0x6C04, 0x2000, "host CR4.VMXE clear (CR4_FIXED0)"
        SCEN "host_cr3_beyond_maxphyaddr", "HOST-CR3-WIDTH", 0, ap_host_cr3_maxphy, 0, 0, "host CR3 with bit MAXPHYADDR set"
        SCEN "host_sysenter_esp_noncanonical", "HOST-SYSENTER-ESP-CANON", 0, 0, 0x6C10, 0x0000900000000000, "host IA32_SYSENTER_ESP non-canonical"
        SCEN "host_cs_ti_set", "HOST-SEL-RPL-TI", 0, 0, 0x0C02, 0x0C, "host CS selector 0x0C (TI = 1)"
        SCEN "host_cs_null", "HOST-CS-NULL", 0, 0, 0x0C02, 0, "host CS selector 0"
        SCEN "host_tr_null", "HOST-TR-NULL", 0, 0, 0x0C0C, 0, "host TR selector 0"
        SCEN "host_fs_base_noncanonical", "HOST-BASE-CANON", 0, 0, 0x6C06, 0x0000900000000000, "host FS base non-canonical"
        SCEN "host_address_space_size_clear", "HOST-ADDR-SIZE-LMA", FL_ANDN, 0, 0x400C, 1 << 9, "host address-space size clear while the VMM runs in IA-32e mode"
        SCEN "host_cr4_pae_clear", "HOST-64-CR4-PAE", FL_ANDN, 0, 0x6C04, 0x20, "64-bit host with host CR4.PAE clear"
        SCEN "host_rip_noncanonical", "HOST-64-RIP-CANON", 0, 0, 0x6C16, 0x0000900000001000, "64-bit host with non-canonical HOST_RIP"
        SCEN "guest_cr0_ne_clear", "GUEST-CR0-FIXED", FL_ANDN, 0, 0x6800, 0x20, "guest CR0.NE clear (CR0_FIXED0)"
        SCEN "guest_cr0_pg_without_pe", "GUEST-CR0-PG-WITHOUT-PE", 0, ap_pg_without_pe, 0, 0, "unrestricted guest, guest CR0.PG set with CR0.PE clear"
        SCEN "guest_cr4_vmxe_clear", "GUEST-CR4-FIXED", FL_ANDN, 0, 0x6804, 0x2000, "guest CR4.VMXE clear (CR4_FIXED0)"
        SCEN "guest_ia32e_cr4_pae_clear", "GUEST-IA32E-PG-PAE", FL_ANDN, 0, 0x6804, 0x20, "IA-32e mode guest with guest CR4.PAE clear"
        SCEN "guest_cr3_beyond_maxphyaddr", "GUEST-CR3-WIDTH", 0, ap_guest_cr3_maxphy, 0, 0, "guest CR3 with bit MAXPHYADDR set"
        SCEN "guest_efer_lma_clear", "GUEST-EFER-LMA", 0, ap_efer_lma, 0, 0, "load IA32_EFER with EFER = 0 (LMA != IA-32e mode guest)"
        SCEN "guest_efer_lme_clear", "GUEST-EFER-LME", 0, ap_efer_lme, 0, 0, "load IA32_EFER with EFER = 0x400 (LMA set, LME clear, CR0.PG set)"
        SCEN "guest_cs_type_data", "GUEST-CS-TYPE", 0, 0, 0x4816, 0xA093, "guest CS access rights type 3 (data)"
        SCEN "guest_cs_dpl_ne_ss_dpl", "GUEST-CS-DPL", 0, 0, 0x4816, 0xA0FB, "guest CS DPL 3 with SS DPL 0 (CS type 11)"
        SCEN "guest_ss_dpl_ne_rpl", "GUEST-SS-DPL-RPL", 0, ap_ss_dpl_rpl, 0, 0, "guest SS DPL 3 with SS selector RPL 0 (CS DPL 3 to keep CS.DPL = SS.DPL)"
        SCEN "guest_tr_unusable", "GUEST-TR-UNUSABLE", 0, 0, 0x4822, 0x1008B, "guest TR marked unusable"
        SCEN "guest_tr_type_available", "GUEST-TR-TYPE", 0, 0, 0x4822, 0x89, "guest TR type 9 (available TSS) in an IA-32e guest"
        SCEN "guest_tr_selector_ti", "GUEST-TR-SEL-TI", 0, 0, 0x080E, 0x24, "guest TR selector with TI = 1"
        SCEN "guest_gdtr_limit_high", "GUEST-DTR-LIMIT", 0, 0, 0x4810, 0x1FFFF, "guest GDTR limit with bit 16 set"
        SCEN "guest_rflags_bit1_clear", "GUEST-RFLAGS-RSVD", 0, 0, 0x6820, 0, "guest RFLAGS = 0 (reserved bit 1 clear)"
        SCEN "guest_rip_noncanonical", "GUEST-RIP-CANON", 0, 0, 0x681E, 0x0000900000001000, "IA-32e guest with CS.L = 1 and non-canonical RIP"
        SCEN "guest_activity_state_4", "GUEST-ACTIVITY-VALID", 0, 0, 0x4826, 4, "guest activity state 4 (reserved)"
        SCEN "guest_interruptibility_sti_movss", "GUEST-INTR-STI-MOVSS", 0, ap_sti_movss, 0, 0, "interruptibility: blocking by STI and by MOV SS (RFLAGS.IF = 1)"
        SCEN "guest_interruptibility_sti_if_clear", "GUEST-INTR-STI-IF", 0, 0, 0x4824, 1, "interruptibility: blocking by STI with RFLAGS.IF = 0"
        SCEN "guest_pending_debug_reserved", "GUEST-PENDDBG-RSVD", 0, 0, 0x6822, 0x10, "pending debug exceptions bit 4 (reserved) set"
        SCEN "vmcs_link_pointer_unaligned", "GUEST-LINK-PTR-ADDR", 0, 0, 0x2800, BAD_LINK_PA + 0x10, "VMCS link pointer not all ones and not 4 KiB aligned"
        SCEN "vmcs_link_pointer_bad_revision", "GUEST-LINK-PTR-REVID", 0, 0, 0x2800, BAD_LINK_PA, "VMCS link pointer to a zeroed page (revision id 0)"
        SCEN "entry_msr_load_x2apic_entry_2", "MSRLOAD-X2APIC", 0, ap_msr_load_x2apic, 0, 0, "VM-entry MSR-load count 2: entry 1 IA32_SYSENTER_CS, entry 2 MSR 0x808 (x2APIC range)"
        SCEN "entry_msr_load_fs_base", "MSRLOAD-FS-GS-BASE", 0, ap_msr_load_fs_base, 0, 0, "VM-entry MSR-load count 1: IA32_FS_BASE"
        SCEN "entry_msr_load_reserved_bits", "MSRLOAD-RSVD", 0, ap_msr_load_rsvd, 0, 0, "VM-entry MSR-load count 1: entry with bits 63:32 = 1"
        SCEN "vmresume_with_clear_vmcs", "PRE-LAUNCH-STATE", FL_VMRESUME, 0, 0x681C, GUEST_STACK_TOP, "VMRESUME of a VMCS whose launch state is clear"
        SCEN "vmlaunch_in_movss_shadow", "PRE-MOVSS", FL_MOVSS, 0, 0x681C, GUEST_STACK_TOP, "VMLAUNCH right after MOV SS"
        SCEN "no_current_vmcs", "PRE-NO-VMCS", FL_VMCLEAR, 0, 0x681C, GUEST_STACK_TOP, "VMCLEAR of the current VMCS before VMLAUNCH (fields read before the VMCLEAR)"
        dq      0

; ========================================================== main run ========
main_run:
        mov     rsp, HOST_STACK_TOP
        mov     rdi, VMCS_PA
        mov     ecx, 512
        xor     eax, eax
        rep     stosq
        mov     eax, [rel revision]
        mov     [VMCS_PA], eax
        vmclear [rel vmcs_ptr]
        jbe     .fail
        vmptrld [rel vmcs_ptr]
        jbe     .fail
        call    setup_baseline
        mov     qword [INFO_PA + INFO_EXITS], 0
        mov     qword [INFO_PA + INFO_STATE], 1
        PRINT   `FEATURES `
        PHEX    [rel features], 8
        call    newline
        PRINT   `MAIN VMLAUNCH\n`
        xchg    bx, bx                          ; BREAK 0: the script enables vmexitbp here
        vmlaunch
        PRINT   `VMLAUNCH FAIL `
        pushfq
        pop     rax
        PHEX    rax, 4
        test    eax, 0x40
        jz      .no_err
        mov     edx, 0x4400
        vmread  rax, rdx
        PRINT   ` err=`
        PHEX    rax, 8
.no_err:
        call    newline
        jmp     fatal
.fail:
        PRINT   `MAIN VMCS FAIL\n`
        jmp     fatal

; ---------------------------------------------------------- the guest -------
guest_entry:
        xor     eax, eax
        cpuid                                   ; CPUID (10)
        test    dword [INFO_PA + INFO_FEATURES], F_MSR
        jz      .no_msr
        mov     ecx, 0x10
        rdmsr                                   ; not in the bitmap: no exit
        mov     ecx, 0x174
        rdmsr                                   ; RDMSR (31)
        mov     ecx, 0xC0000102
        xor     eax, eax
        xor     edx, edx
        wrmsr                                   ; WRMSR (32)
.no_msr:
        test    dword [INFO_PA + INFO_FEATURES], F_IO
        jz      .no_io
        in      al, 0x71                        ; I/O (30), bitmap A, immediate port
        mov     dx, 0x9000
        out     dx, eax                         ; I/O (30), bitmap B, DX, 4 bytes
.no_io:
        test    dword [INFO_PA + INFO_FEATURES], F_CR3
        jz      .no_cr3
        mov     rax, cr3
        mov     cr3, rax                        ; CR access (28): MOV to CR3
.no_cr3:
        mov     rax, cr4
        or      rax, 0x2000
        mov     cr4, rax                        ; CR access (28): MOV to CR4 of a masked bit
        test    dword [INFO_PA + INFO_FEATURES], F_CR8
        jz      .no_cr8
        mov     rax, cr8                        ; CR access (28): MOV from CR8
.no_cr8:
        test    dword [INFO_PA + INFO_FEATURES], F_DR
        jz      .no_dr
        mov     rax, dr7                        ; MOV DR (29)
.no_dr:
        test    dword [INFO_PA + INFO_FEATURES], F_INVLPG
        jz      .no_invlpg
        invlpg  [0x123000]                      ; INVLPG (14)
.no_invlpg:
        test    dword [INFO_PA + INFO_FEATURES], F_RDTSC
        jz      .no_rdtsc
        rdtsc                                   ; RDTSC (16)
.no_rdtsc:
        sti                                     ; Bochs only unmasks the interrupt with RFLAGS.IF = 1
        nop
        ud2                                     ; exception (0) #UD; the handler sends a self-IPI
        nop                                     ; external interrupt (1) arrives here
        mov     rax, [PF_HOLE_GLA + 0x123]      ; exception (0) #PF, handler maps the page
        test    dword [INFO_PA + INFO_FEATURES], F_EPT
        jz      .no_ept
        mov     rax, [EPT_HOLE_GPA + 0x123]     ; EPT violation (48), handler maps the GPA
.no_ept:
        test    dword [INFO_PA + INFO_FEATURES], F_HLT
        jz      .no_hlt
        hlt                                     ; HLT (12)
.no_hlt:
        mov     eax, 0x600D
        vmcall                                  ; VMCALL (18): the last exit
.spin:
        pause
        jmp     .spin

; ------------------------------------------------------- exit handler -------
exit_fields:                                    ; encoding, name
        dw 0x4402
        db 'reason', 0
        dw 0x6400
        db 'qual', 0
        dw 0x681E
        db 'rip', 0
        dw 0x440C
        db 'len', 0
        dw 0x2400
        db 'gpa', 0
        dw 0x640A
        db 'gla', 0
        dw 0x4404
        db 'intr', 0
        dw 0x4406
        db 'err', 0
        dw 0x4408
        db 'idtv', 0
        dw 0x440A
        db 'idte', 0
        dw 0x440E
        db 'iinfo', 0
        dw 0x681C
        db 'rsp', 0
        dw 0x6820
        db 'rflags', 0
        dw 0

exit_handler:
        mov     [GREGS_PA + 0x00], rax
        mov     [GREGS_PA + 0x08], rbx
        mov     [GREGS_PA + 0x10], rcx
        mov     [GREGS_PA + 0x18], rdx
        mov     [GREGS_PA + 0x20], rsi
        mov     [GREGS_PA + 0x28], rdi
        mov     [GREGS_PA + 0x30], rbp
        mov     [GREGS_PA + 0x38], r8
        mov     [GREGS_PA + 0x40], r9
        mov     [GREGS_PA + 0x48], r10
        mov     [GREGS_PA + 0x50], r11
        mov     [GREGS_PA + 0x58], r12
        mov     [GREGS_PA + 0x60], r13
        mov     [GREGS_PA + 0x68], r14
        mov     [GREGS_PA + 0x70], r15
        mov     rax, [INFO_PA + INFO_EXITS]
        inc     rax
        mov     [INFO_PA + INFO_EXITS], rax
        cmp     rax, MAX_STOPS
        jbe     .room
        PRINT   `TOO MANY EXITS\n`
        jmp     fatal
.room:
        lea     rdi, [rax - 1]
        shl     rdi, 7
        add     rdi, EXIT_LOG_PA
        mov     [rel cur_rec], rdi
        PRINT   `EXIT `
        PHEX    rax, 2
        call    log_exit_fields
        mov     rdi, [rel cur_rec]
        mov     eax, [rdi]                      ; exit reason
        movzx   ebx, ax
        cmp     ebx, 0
        je      .exception
        cmp     ebx, 1
        je      .extint
        cmp     ebx, 48
        je      .ept
        cmp     ebx, 18
        je      all_done
        cmp     ebx, 10
        je      .advance
        cmp     ebx, 12
        je      .advance
        cmp     ebx, 14
        je      .advance
        cmp     ebx, 16
        je      .advance
        cmp     ebx, 28
        je      .advance
        cmp     ebx, 29
        je      .advance
        cmp     ebx, 30
        je      .advance
        cmp     ebx, 31
        je      .advance
        cmp     ebx, 32
        je      .advance
        jmp     .unexpected
.exception:
        mov     eax, [rdi + 0x30]               ; VM-exit interruption info
        cmp     al, 6
        je      .ud
        cmp     al, 14
        je      .pf
        jmp     .unexpected
.ud:
        mov     ecx, 2                          ; ud2 is 2 bytes (the length field is not defined here)
        call    advance_rip
        test    qword [rel features], F_EXTINT
        jz      .resume
        mov     rax, LAPIC_PA
        mov     dword [rax + 0x300], 0x00044000 | IPI_VECTOR   ; fixed, self
        jmp     .resume
.pf:
        mov     qword [GUEST_PD_PA + (PF_HOLE_GLA >> 21) * 8], PF_HOLE_GLA | 0x83
        jmp     .resume
.extint:
        mov     rax, LAPIC_PA
        mov     dword [rax + 0xB0], 0           ; EOI (acknowledged on exit)
        jmp     .resume
.ept:
        mov     qword [EPT_PD_PA + (EPT_HOLE_GPA >> 21) * 8], EPT_HOLE_GPA | 0xB7
        jmp     .resume
.advance:
        mov     ecx, [rdi + 0x18]               ; VM-exit instruction length
        call    advance_rip
.resume:
        mov     rax, [GREGS_PA + 0x00]
        mov     rbx, [GREGS_PA + 0x08]
        mov     rcx, [GREGS_PA + 0x10]
        mov     rdx, [GREGS_PA + 0x18]
        mov     rsi, [GREGS_PA + 0x20]
        mov     rdi, [GREGS_PA + 0x28]
        mov     rbp, [GREGS_PA + 0x30]
        mov     r8, [GREGS_PA + 0x38]
        mov     r9, [GREGS_PA + 0x40]
        mov     r10, [GREGS_PA + 0x48]
        mov     r11, [GREGS_PA + 0x50]
        mov     r12, [GREGS_PA + 0x58]
        mov     r13, [GREGS_PA + 0x60]
        mov     r14, [GREGS_PA + 0x68]
        mov     r15, [GREGS_PA + 0x70]
        vmresume
        PRINT   `VMRESUME FAIL\n`
        jmp     fatal
.unexpected:
        PRINT   `UNEXPECTED EXIT\n`
        jmp     fatal

log_exit_fields:                                ; VMREAD the exit fields into [rdi], print " k=v"... NL
        push    rbx
        push    rsi
        lea     rsi, [rel exit_fields]
        mov     rbx, rdi
.field:
        movzx   edx, word [rsi]
        test    edx, edx
        jz      .done
        add     rsi, 2
        call    vmr_safe
        mov     [rbx], rax
        add     rbx, 8
        PCHAR   ' '
        call    puts
        PCHAR   '='
        PHEX    rax, 16
        call    strend
        jmp     .field
.done:
        call    newline
        pop     rsi
        pop     rbx
        ret

advance_rip:                                    ; GUEST_RIP += ecx
        push    rcx
        VMR     0x681E
        pop     rcx
        add     rax, rcx
        mov     edx, 0x681E
        jmp     vmw

; ------------------------------------------------------- ground truth -------
all_done:
        mov     rsp, EXIT_STACK_TOP
        mov     qword [INFO_PA + INFO_STATE], 2
        PRINT   `DONE exits=`
        PHEX    [INFO_PA + INFO_EXITS], 2
        call    newline
        ; every field VMREAD can read, before anything else touches the VMCS
        lea     rsi, [rel str_f]
        xor     r13d, r13d
        call    scan_print
        ; VMX capability MSRs
        xor     r12d, r12d
.msr:
        cmp     r12, [INFO_PA + INFO_MSR_N]
        jae     .msr_done
        mov     rbx, r12
        shl     rbx, 4
        add     rbx, MSR_TABLE_PA
        PRINT   `MSR `
        PHEX    [rbx], 8
        PCHAR   ' '
        PHEX    [rbx + 8], 16
        call    newline
        inc     r12
        jmp     .msr
.msr_done:
        PRINT   `INFO maxphyaddr `
        PHEX    [rel maxphy], 2
        call    newline
        PRINT   `INFO vmxon `
        PHEX    [INFO_PA + INFO_VMXON], 16
        call    newline
        PRINT   `INFO vmcs `
        PHEX    [INFO_PA + INFO_VMCS], 16
        call    newline
        PRINT   `INFO eptp `
        PHEX    [rel eptp], 16
        call    newline
        PRINT   `INFO info_block `
        mov     eax, INFO_PA
        PHEX    rax, 16
        call    newline
        PRINT   `INFO host_cr3 `
        PHEX    [INFO_PA + INFO_HOST_CR3], 16
        call    newline
        PRINT   `INFO guest_cr3 `
        PHEX    [INFO_PA + INFO_GUEST_CR3], 16
        call    newline
        PRINT   `INFO exit_log `
        PHEX    [INFO_PA + INFO_EXIT_LOG], 16
        call    newline
        PRINT   `INFO probe_table `
        PHEX    [INFO_PA + INFO_PROBE], 16
        call    newline
        PRINT   `INFO scen_save `
        PHEX    [INFO_PA + INFO_SCEN_SAVE], 16
        call    newline
        PRINT   `GT END\n`
        mov     qword [INFO_PA + INFO_STATE], 3
        ; BREAK 1, repeated so that the debugger script always sees
        ; MAX_STOPS + 1 stops after BREAK 0, whatever the number of exits
        mov     rcx, MAX_STOPS + 1
        sub     rcx, [INFO_PA + INFO_EXITS]
.pad:
        xchg    bx, bx                          ; BREAK 1
        loop    .pad
        vmclear [rel vmcs_ptr]
        PRINT   `VMCLEAR done\n`
        mov     qword [INFO_PA + INFO_STATE], 4
        xchg    bx, bx                          ; BREAK 2
        vmxoff
        mov     qword [INFO_PA + INFO_STATE], 5
        PRINT   `VMXOFF done\n`
        xchg    bx, bx                          ; BREAK 3
.halt:
        cli
        hlt
        jmp     .halt

%ifdef SMP
; ================================================================ SMP ========
; The BSP wakes the AP with INIT-SIPI-SIPI.  The AP enters long mode on the
; BSP's page tables, does its own VMXON and VMCS, launches a guest that exits
; with CPUID and VMCALL, prints its ground truth (AP/AF lines) and parks in
; VMX root operation with its VMCS current and launched.  The BSP waits for
; it before printing anything else, so the two never interleave on port 0xE9.
start_ap:
        lea     rsi, [rel ap_tramp]
        mov     rdi, AP_TRAMP_PA
        mov     ecx, ap_tramp_end - ap_tramp
        rep     movsb
        mov     qword [INFO_PA + INFO_AP_STATE], 0
        mov     qword [INFO_PA + INFO_AP_VMXON], AP_VMXON_PA
        mov     qword [INFO_PA + INFO_AP_VMCS], AP_VMCS_PA
        mov     rbx, LAPIC_PA
        mov     dword [rbx + 0x310], 0
        mov     dword [rbx + 0x300], 0x000C4500                 ; INIT, all excluding self
        call    ap_delay
        mov     dword [rbx + 0x300], 0x000C4600 | (AP_TRAMP_PA >> 12)  ; SIPI
        call    ap_delay
        mov     dword [rbx + 0x300], 0x000C4600 | (AP_TRAMP_PA >> 12)  ; SIPI
        mov     ecx, 50000000
.wait:
        pause
        cmp     qword [INFO_PA + INFO_AP_STATE], 3
        jae     .done
        dec     ecx
        jnz     .wait
        PRINT   `AP TIMEOUT\n`
        ret
.done:
        mov     qword [INFO_PA + INFO_CPUS], 2
        PRINT   `AP done\n`
        ret

ap_delay:
        push    rcx
        mov     ecx, 100000
.l:
        pause
        loop    .l
        pop     rcx
        ret

        bits    16
ap_tramp:                                       ; copied to AP_TRAMP_PA, runs at 0100:0000
        cli
        xor     ax, ax
        mov     ds, ax
        lgdt    [gdt_desc]
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        jmp     dword 0x18:ap_pm32
ap_tramp_end:

        bits    32
ap_pm32:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     esp, AP_STACK_TOP
        mov     eax, HOST_PML4_PA
        mov     cr3, eax
        mov     eax, cr4
        or      eax, 0x20
        mov     cr4, eax
        mov     ecx, 0xC0000080
        rdmsr
        or      eax, 0x100
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000
        mov     cr0, eax
        jmp     0x08:ap_lm64

        bits    64
ap_lm64:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     fs, ax
        mov     gs, ax
        mov     rsp, AP_STACK_TOP
        lgdt    [rel gdt_desc64]
        mov     ax, 0x30
        ltr     ax
        lidt    [rel idt_desc]
        mov     qword [INFO_PA + INFO_AP_STATE], 1
        mov     ecx, 0x3A
        call    rdmsr64
        test    eax, 1
        jnz     .locked
        or      eax, 5
        xor     edx, edx
        wrmsr
.locked:
        mov     rax, cr0
        or      rax, [rel cr0_fixed0]
        and     rax, [rel cr0_fixed1]
        mov     cr0, rax
        mov     rax, cr4
        or      rax, 0x2000
        or      rax, [rel cr4_fixed0]
        and     rax, [rel cr4_fixed1]
        mov     cr4, rax
        mov     eax, [rel revision]
        mov     [AP_VMXON_PA], eax
        mov     [AP_VMCS_PA], eax
        vmxon   [rel ap_vmxon_ptr]
        jbe     .fail
        vmclear [rel ap_vmcs_ptr]
        jbe     .fail
        vmptrld [rel ap_vmcs_ptr]
        jbe     .fail
        call    setup_baseline
        VMW     0x0C0C, 0x30
        VMW     0x6C0A, TSS_PA + 0x100
        VMW     0x6C14, AP_EXIT_STACK
        VMW     0x6C16, ap_exit_handler
        VMW     0x681C, AP_GUEST_STACK
        VMW     0x681E, ap_guest
        mov     qword [INFO_PA + INFO_AP_STATE], 2
        PRINT   `AP VMLAUNCH\n`
        vmlaunch
.fail:
        PRINT   `AP FAIL\n`
        mov     qword [INFO_PA + INFO_AP_STATE], 4
        jmp     ap_park

ap_guest:
        xor     eax, eax
        cpuid                                   ; CPUID (10)
        mov     eax, 0xA9
        vmcall                                  ; VMCALL (18): the AP's last exit
.spin:
        pause
        jmp     .spin

ap_exit_handler:
        mov     rax, [INFO_PA + INFO_AP_EXITS]
        inc     rax
        mov     [INFO_PA + INFO_AP_EXITS], rax
        lea     rdi, [rax - 1]
        shl     rdi, 7
        add     rdi, AP_EXIT_LOG_PA
        PRINT   `AP EXIT `
        PHEX    rax, 2
        call    log_exit_fields
        mov     eax, [rdi]
        cmp     ax, 10
        je      .cpuid
        cmp     ax, 18
        je      .done
        PRINT   `AP UNEXPECTED EXIT\n`
        mov     qword [INFO_PA + INFO_AP_STATE], 4
        jmp     ap_park
.cpuid:
        mov     ecx, [rdi + 0x18]
        call    advance_rip
        vmresume
        PRINT   `AP VMRESUME FAIL\n`
        mov     qword [INFO_PA + INFO_AP_STATE], 4
        jmp     ap_park
.done:
        lea     rsi, [rel str_af]
        xor     r13d, r13d
        call    scan_print
        PRINT   `AP GT END\n`
        mov     qword [INFO_PA + INFO_AP_STATE], 3
ap_park:                                        ; VMX root, VMCS current and launched
        cli
        hlt
        jmp     ap_park

str_af:         db 'AF ', 0
        align   8
ap_vmxon_ptr:   dq AP_VMXON_PA
ap_vmcs_ptr:    dq AP_VMCS_PA
%endif

; ------------------------------------------------------------ data ----------
str_f:          db 'F ', 0
str_sf:         db 'SF ', 0
str_r_invalid:  db 'vmfail_invalid', 0
str_r_valid:    db 'vmfail_valid', 0
str_r_entry:    db 'entry_failure', 0
str_r_ok:       db 'ok', 0
str_r_skipped:  db 'skipped', 0
str_r_anomaly:  db 'anomaly', 0

        align   8
vmxon_ptr:      dq VMXON_PA
vmcs_ptr:       dq VMCS_PA
probe_ptr:      dq PROBE_VMCS_PA
scen_ptr:       dq 0
revision:       dq 0
maxphy:         dq 0
features:       dq 0
eptp:           dq 0
msr_basic:      dq 0
msr_pin:        dq 0
msr_proc:       dq 0
msr_exit:       dq 0
msr_entry:      dq 0
msr_misc:       dq 0
msr_proc2:      dq 0
msr_eptcap:     dq 0
cr0_fixed0:     dq 0
cr0_fixed1:     dq 0
cr4_fixed0:     dq 0
cr4_fixed1:     dq 0
ctl_pin:        dq 0
ctl_proc:       dq 0
ctl_proc2:      dq 0
ctl_exit:       dq 0
ctl_entry:      dq 0
cur_rec:        dq 0
scen_index:     dq 0
scen_rec:       dq 0
scen_skip:      dq 0
scen_id:        dq 0
scen_rule:      dq 0
scen_desc:      dq 0
scen_result:    dq 0
scen_err:       dq 0
scen_reason:    dq 0
scen_qual:      dq 0

image_end:
LOAD_SECTORS    equ (image_end - $$ + 511) / 512 - 1
%if (image_end - $$) > (HOST_PML4_PA - 0x7C00)
%error "image too large for the load area"
%endif
        times   1474560 - ($ - $$) db 0
