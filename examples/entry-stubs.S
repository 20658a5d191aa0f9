/* A tour of what framevet catches, built from real review threads
 * (../shared/seeds): run `framevet check --profile kernel examples/entry-stubs.S`.
 *
 *   xen_page_fault        seed 000: Xen PV trap trampoline; clean because
 *                         framevet.toml beside this file declares its frame
 *   lockdep_sys_exit_bad  seed 002: "saves" into pt_regs slots never allocated,
 *                         i.e. into the caller's frame (objtool is silent)
 *   gpr_switch_old        seed 001: return-oriented register switch that rewrites
 *                         its return address
 *   load_guest_gprs       seed 001 rewrite: clobbers callee-saved registers by design;
 *                         declared in framevet.toml, so clean
 *   fred_irq_bad          seed 004: FRED frame built, handler returns with ERETS,
 *                         objtool's "return with modified stack frame"
 */
	.text
	.globl	xen_page_fault
	.type	xen_page_fault, @function
xen_page_fault:
	pop	%rcx
	pop	%r11
	jmp	asm_exc_page_fault
	.size	xen_page_fault, .-xen_page_fault

	.globl	lockdep_sys_exit_bad
	.type	lockdep_sys_exit_bad, @function
lockdep_sys_exit_bad:
	movq	%r15, 0*8+8(%rsp)
	movq	%rbx, 5*8+8(%rsp)
	call	lockdep_sys_exit
	movq	0*8+8(%rsp), %r15
	movq	5*8+8(%rsp), %rbx
	ret
	.size	lockdep_sys_exit_bad, .-lockdep_sys_exit_bad

	.globl	gpr_switch_old
	.type	gpr_switch_old, @function
gpr_switch_old:
	movq	(%rsp), %rcx
	movq	%rdi, (%rsp)
	pushq	%rbx
	movq	40(%rdi), %rbx
	pushq	%rcx
	leaq	gpr_switch_back(%rip), %rcx
	movq	%rcx, (%rsp)
	ret
	.size	gpr_switch_old, .-gpr_switch_old

	.globl	load_guest_gprs
	.type	load_guest_gprs, @function
load_guest_gprs:
	movq	40(%rdi), %rbx
	movq	32(%rdi), %rbp
	movq	24(%rdi), %r12
	ret
	.size	load_guest_gprs, .-load_guest_gprs

	.globl	fred_irq_bad
	.type	fred_irq_bad, @function
fred_irq_bad:
	push	%rbp
	mov	%rsp, %rbp
	and	$-64, %rsp
	push	$0x18
	push	%rbp
	pushf
	push	$0x10
	push	$0
	push	%rdi
	call	external_interrupt
	pop	%rbp
	ret
	.size	fred_irq_bad, .-fred_irq_bad
