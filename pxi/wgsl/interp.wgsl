// The PXI interpreter: one invocation = one PXI thread.
//
// Semantics are those of docs/pxi.md and the NumPy reference (pxi/numpy_exec.py);
// every check happens in the same order there, so both fault identically.  Opcodes,
// must-be-zero masks, statuses, fault codes and state-field indices are generated
// constants (inserted below by pxi/wgslgen.py), never copied by hand.
//
// A dispatch runs each runnable thread for at most min(budget left, P.slice) steps.
// Threads keep registers in private memory during the dispatch and write their state
// back at the end.  What the host must act on (a request, a deferred neural op, a
// fault) is appended to the event queue; per-status counts go to the counters.

{{CONSTANTS}}

struct Params {
    run_id: u32,
    budget: u32,       // steps each thread may execute in this run()
    slice: u32,        // steps a thread may execute in this dispatch
    flags: u32,        // FLAG_RELEASE_BARRIER | FLAG_RELEASE_NEURAL
    nthreads: u32,
    npix: u32,
    mem_bytes: u32,
    inline_work: u32,  // neural ops doing more multiply-adds than this run as their own dispatch
    nresp: u32,        // respond(): number of effect rows
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> prog: array<u32>;
@group(0) @binding(1) var<storage, read_write> mem: array<u32>;
@group(0) @binding(2) var<storage, read_write> st: array<u32>;
@group(0) @binding(3) var<storage, read_write> ctr: array<atomic<u32>>;
// Params live in a storage buffer, not a uniform one: lavapipe specialises (recompiles)
// shaders on the values of small uniform buffers, and these change every dispatch.
@group(0) @binding(4) var<storage, read> P: Params;
@group(0) @binding(5) var<storage, read_write> prof: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> resp: array<u32>;

var<private> tid: u32;
var<private> pc: u32;
var<private> status: u32;
var<private> r: array<u32, 16>;
var<private> fcode: u32;
var<private> fd0: u32;
var<private> fd1: u32;
var<private> qkind: u32;       // event to post at the end of the dispatch (0: none)
var<private> q: array<u32, 5>; // its payload

var<workgroup> wgc: array<atomic<u32>, 10>;

fn S(field: u32) -> u32 {
    return field * P.nthreads + tid;
}

fn fault(code: u32, d0: u32, d1: u32) {
    status = ST_FAULTED;
    fcode = code;
    fd0 = d0;
    fd1 = d1;
}

// Must-be-zero bits set: the pixel is not a valid encoding of its opcode.
fn bad(w: u32, mz: u32) -> bool {
    if ((w & mz) != 0u) {
        fault(F_BAD_ENCODING, w, 0u);
        return true;
    }
    return false;
}

fn bad_if(w: u32, cond: bool) -> bool {
    if (cond) {
        fault(F_BAD_ENCODING, w, 0u);
    }
    return cond;
}

// The extension pixel of a two-pixel instruction (faults when it is past the end).
fn ext() -> u32 {
    if (pc + 1u >= P.npix) {
        fault(F_PC_RANGE, pc + 1u, 2u);
        return 0u;
    }
    return prog[pc + 1u];
}

fn jump(dest: u32) {
    if (dest >= P.npix) {
        fault(F_PC_RANGE, dest, 1u);
    } else {
        pc = dest;
    }
}

fn sx8(v: u32) -> u32 {
    return bitcast<u32>(bitcast<i32>(v << 24u) >> 24u);
}

fn sx16(v: u32) -> u32 {
    return bitcast<u32>(bitcast<i32>(v << 16u) >> 16u);
}

// Alignment first, then bounds, exactly like NumpyExecutor._access_ok.
fn access(addr: u32, size: u32, limit: u32) -> bool {
    if ((addr & (size - 1u)) != 0u) {
        fault(F_MISALIGNED, addr, size);
        return false;
    }
    if (addr >= limit || limit - addr < size) {
        fault(F_OUT_OF_BOUNDS, addr, size);
        return false;
    }
    return true;
}

fn byte_of(word: u32, addr: u32) -> u32 {
    return (word >> ((addr & 3u) * 8u)) & 0xffu;
}

fn wmask(width: u32) -> u32 {
    if (width >= 32u) {
        return 0xffffffffu;
    }
    return (1u << width) - 1u;
}

// A posted write (outp, mwrp): with a credit left it goes to the event queue at once
// and the thread goes on; without one it waits like its non-posted form.  The queue
// has room for POST_CREDITS posted entries per thread and dispatch besides the thread's
// own entry (pxi/wgpu_exec.py), and this invocation's slots come in issue order.
fn post(kind: u32, width: u32, alo: u32, ahi: u32, vlo: u32, vhi: u32) {
    let n = st[S(FLD_POSTED)];
    if (n >= POST_CREDITS) {
        block(kind, width, alo, ahi, vlo, vhi);
        return;
    }
    st[S(FLD_POSTED)] = n + 1u;
    let slot = atomicAdd(&ctr[C_QUEUE], 1u);
    let base = QUEUE_HEADER + slot * QUEUE_ENTRY;
    atomicStore(&ctr[base], tid);
    atomicStore(&ctr[base + 1u], Q_POSTED);
    atomicStore(&ctr[base + 2u], pc);
    atomicStore(&ctr[base + 3u], kind | (width << 8u));
    atomicStore(&ctr[base + 4u], alo);
    atomicStore(&ctr[base + 5u], ahi);
    atomicStore(&ctr[base + 6u], vlo);
    atomicStore(&ctr[base + 7u], vhi);
    pc += 1u;
}

fn block(kind: u32, width: u32, alo: u32, ahi: u32, vlo: u32, vhi: u32) {
    status = ST_BLOCKED;
    st[S(FLD_RQ_KIND)] = kind;
    st[S(FLD_RQ_WIDTH)] = width;
    st[S(FLD_RQ_ALO)] = alo;
    st[S(FLD_RQ_AHI)] = ahi;
    st[S(FLD_RQ_VLO)] = vlo;
    st[S(FLD_RQ_VHI)] = vhi;
    qkind = Q_REQUEST;
    q[0] = kind | (width << 8u);
    q[1] = alo;
    q[2] = ahi;
    q[3] = vlo;
    q[4] = vhi;
}

fn port_ok(port: u32) -> bool {
    if (port > 0xffffu) {
        fault(F_BAD_PORT, port, 0u);
        return false;
    }
    return true;
}

fn mmio_aligned(alo: u32, width: u32) -> bool {
    let size = width / 8u;
    if ((alo & (size - 1u)) != 0u) {
        fault(F_MISALIGNED, alo, size);
        return false;
    }
    return true;
}

// ---- neural ops ----------------------------------------------------------------------

struct Mat {
    rows: u32,
    cols: u32,
    data: u32,   // image byte address of element 0
    scale: f32,
    offset: f32,
}
var<private> M: Mat;

fn matrix(h: u32) -> bool {
    if (h >= P.npix || P.npix - h < MATRIX_HEADER_PIXELS) {
        fault(F_BAD_MATRIX, h, MP_PAST_END);
        return false;
    }
    let h0 = prog[h];
    if ((h0 & 0xffu) != MATRIX_MARKER) {
        fault(F_BAD_MATRIX, h, MP_MARKER);
        return false;
    }
    if ((h0 >> 8u) != MATRIX_DTYPE_U8) {
        fault(F_BAD_MATRIX, h, MP_DTYPE);
        return false;
    }
    let rows = prog[h + 1u];
    let cols = prog[h + 2u];
    if (rows == 0u || cols == 0u) {
        fault(F_BAD_MATRIX, h, MP_EMPTY);
        return false;
    }
    let avail = (P.npix - h - MATRIX_HEADER_PIXELS) * 4u;
    if (cols > avail / rows) {
        fault(F_BAD_MATRIX, h, MP_PAST_END);
        return false;
    }
    let sb = prog[h + 3u];
    let ob = prog[h + 4u];
    if ((sb & 0x7f800000u) == 0x7f800000u || (sb & 0x7fffffffu) == 0u || (sb >> 31u) != 0u
        || (ob & 0x7f800000u) == 0x7f800000u) {
        fault(F_BAD_MATRIX, h, MP_SCALE);
        return false;
    }
    M = Mat(rows, cols, (h + MATRIX_HEADER_PIXELS) * 4u, bitcast<f32>(sb), bitcast<f32>(ob));
    return true;
}

// Dequantization, defined once (pxi/matrix.py): f = f32(q) / scale + offset.
fn wq(i: u32) -> f32 {
    let byte = M.data + i;
    let qv = byte_of(prog[byte >> 2u], byte);
    return f32(qv) / M.scale + M.offset;
}

fn region(addr: u32, rows: u32, cols: u32) -> bool {
    if ((addr & 3u) != 0u) {
        fault(F_MISALIGNED, addr, 4u);
        return false;
    }
    if (rows == 0u || cols == 0u) {
        return true;
    }
    var avail = 0u;
    if (addr < P.mem_bytes) {
        avail = (P.mem_bytes - addr) / 4u;
    }
    if (rows > avail / cols) {
        fault(F_OUT_OF_BOUNDS, addr, rows * cols);
        return false;
    }
    return true;
}

fn overlap_ok(o: u32, no: u32, i: u32, ni: u32, allow_same: bool) -> bool {
    if (no == 0u || ni == 0u || (allow_same && o == i)) {
        return true;
    }
    if (o < i + 4u * ni && i < o + 4u * no) {
        fault(F_OVERLAP, o, i);
        return false;
    }
    return true;
}

fn memf(addr: u32) -> f32 {
    return bitcast<f32>(mem[addr >> 2u]);
}

fn set_memf(addr: u32, v: f32) {
    mem[addr >> 2u] = bitcast<u32>(v);
}

fn defer(kind: u32, out: u32, inp: u32, mat: u32, n: u32) {
    status = ST_NEURAL;
    qkind = Q_NEURAL;
    q[0] = kind;
    q[1] = out;
    q[2] = inp;
    q[3] = mat;
    q[4] = n;
}

// ---- the interpreter loop ---------------------------------------------------------------

fn execute(limit: u32) -> u32 {
    var steps = 0u;
    loop {
        if (steps >= limit) {
            break;
        }
        if (pc >= P.npix) {
            fault(F_PC_RANGE, pc, 0u);
            break;
        }
        let w = prog[pc];
        steps += 1u;
        {{PROFILE_HOOK}}
        let g = (w >> 8u) & 0xffu;
        let b = (w >> 16u) & 0xffu;
        let a = w >> 24u;
        switch (w & 0xffu) {
            // -- control
            case OP_HALT: {
                if (bad(w, MZ_HALT)) { break; }
                status = ST_HALTED;
            }
            case OP_NOP: {
                if (bad(w, MZ_NOP)) { break; }
                pc += 1u;
            }
            case OP_YIELD: {
                if (bad(w, MZ_YIELD)) { break; }
                pc += 1u;
                status = ST_YIELDED;
            }
            case OP_BARRIER: {
                if (bad(w, MZ_BARRIER)) { break; }
                pc += 1u;
                status = ST_BARRIER;
            }
            case OP_JMP: {
                if (bad(w, MZ_JMP)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                jump(x);
            }
            case OP_CALL: {
                if (bad(w, MZ_CALL)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                if (x >= P.npix) { fault(F_PC_RANGE, x, 1u); break; }
                let sp = st[S(FLD_SP)];
                if (sp >= CALL_DEPTH) { fault(F_CALL_OVERFLOW, sp, 0u); break; }
                st[S(FLD_STACK0 + sp)] = pc + 2u;
                st[S(FLD_SP)] = sp + 1u;
                pc = x;
            }
            case OP_RET: {
                if (bad(w, MZ_RET)) { break; }
                let sp = st[S(FLD_SP)];
                if (sp == 0u) { fault(F_RET_UNDERFLOW, 0u, 0u); break; }
                st[S(FLD_SP)] = sp - 1u;
                pc = st[S(FLD_STACK0 + sp - 1u)];
            }
            case OP_JR: {
                if (bad(w, MZ_JR)) { break; }
                jump(r[g]);
            }
            case OP_BEQ, OP_BNE, OP_BLT, OP_BGE, OP_BLTU, OP_BGEU: {
                if (bad(w, MZ_BEQ)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                let u = r[g];
                let v = r[b];
                var taken = false;
                switch (w & 0xffu) {
                    case OP_BEQ: { taken = u == v; }
                    case OP_BNE: { taken = u != v; }
                    case OP_BLT: { taken = bitcast<i32>(u) < bitcast<i32>(v); }
                    case OP_BGE: { taken = bitcast<i32>(u) >= bitcast<i32>(v); }
                    case OP_BLTU: { taken = u < v; }
                    default: { taken = u >= v; }
                }
                if (taken) { jump(x); } else { pc += 2u; }
            }
            case OP_BZ, OP_BNZ: {
                if (bad(w, MZ_BZ)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                if ((r[g] == 0u) == ((w & 0xffu) == OP_BZ)) { jump(x); } else { pc += 2u; }
            }
            // -- ALU
            case OP_ADD, OP_SUB, OP_MUL, OP_AND, OP_OR, OP_XOR, OP_SHL, OP_SHR, OP_SAR, OP_SEQ, OP_SLT, OP_SLTU: {
                if (bad(w, MZ_ADD)) { break; }
                let u = r[b];
                let v = r[a];
                var res = 0u;
                switch (w & 0xffu) {
                    case OP_ADD: { res = u + v; }
                    case OP_SUB: { res = u - v; }
                    case OP_MUL: { res = u * v; }
                    case OP_AND: { res = u & v; }
                    case OP_OR: { res = u | v; }
                    case OP_XOR: { res = u ^ v; }
                    case OP_SHL: { res = u << (v & 31u); }
                    case OP_SHR: { res = u >> (v & 31u); }
                    case OP_SAR: { res = bitcast<u32>(bitcast<i32>(u) >> (v & 31u)); }
                    case OP_SEQ: { res = select(0u, 1u, u == v); }
                    case OP_SLT: { res = select(0u, 1u, bitcast<i32>(u) < bitcast<i32>(v)); }
                    default: { res = select(0u, 1u, u < v); }
                }
                r[g] = res;
                pc += 1u;
            }
            case OP_MOV: {
                if (bad(w, MZ_MOV)) { break; }
                r[g] = r[b];
                pc += 1u;
            }
            case OP_ADDI: {
                if (bad(w, MZ_ADDI)) { break; }
                r[g] = r[b] + sx8(a);
                pc += 1u;
            }
            case OP_SHLI: {
                if (bad(w, MZ_SHLI)) { break; }
                r[g] = r[b] << a;
                pc += 1u;
            }
            case OP_SHRI: {
                if (bad(w, MZ_SHRI)) { break; }
                r[g] = r[b] >> a;
                pc += 1u;
            }
            case OP_LI: {
                if (bad(w, MZ_LI)) { break; }
                r[g] = sx16(w >> 16u);
                pc += 1u;
            }
            case OP_LI32: {
                if (bad(w, MZ_LI32)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                r[g] = x;
                pc += 2u;
            }
            case OP_TID: {
                if (bad(w, MZ_TID)) { break; }
                r[g] = tid;
                pc += 1u;
            }
            case OP_NTHREADS: {
                if (bad(w, MZ_NTHREADS)) { break; }
                r[g] = P.nthreads;
                pc += 1u;
            }
            // -- memory
            case OP_LD8, OP_LD16, OP_LD32: {
                if (bad(w, MZ_LD8)) { break; }
                let addr = r[b] + sx8(a);
                var size = 4u;
                if ((w & 0xffu) == OP_LD8) { size = 1u; }
                if ((w & 0xffu) == OP_LD16) { size = 2u; }
                if (!access(addr, size, P.mem_bytes)) { break; }
                let word = mem[addr >> 2u];
                if (size == 1u) {
                    r[g] = byte_of(word, addr);
                } else if (size == 2u) {
                    r[g] = (word >> ((addr & 2u) * 8u)) & 0xffffu;
                } else {
                    r[g] = word;
                }
                pc += 1u;
            }
            case OP_LP8, OP_LP32: {
                if (bad(w, MZ_LP8)) { break; }
                let addr = r[b] + sx8(a);
                var size = 4u;
                if ((w & 0xffu) == OP_LP8) { size = 1u; }
                if (!access(addr, size, P.npix * 4u)) { break; }
                let word = prog[addr >> 2u];
                if (size == 1u) { r[g] = byte_of(word, addr); } else { r[g] = word; }
                pc += 1u;
            }
            case OP_ST8, OP_ST16, OP_ST32: {
                if (bad(w, MZ_ST8)) { break; }
                let addr = r[b] + sx8(a);
                var size = 4u;
                if ((w & 0xffu) == OP_ST8) { size = 1u; }
                if ((w & 0xffu) == OP_ST16) { size = 2u; }
                if (!access(addr, size, P.mem_bytes)) { break; }
                let v = r[g];
                let i = addr >> 2u;
                if (size == 4u) {
                    mem[i] = v;
                } else {
                    // Sub-word stores read-modify-write their word (docs/pxi.md: races).
                    let sh = (addr & 3u) * 8u;
                    let m = wmask(size * 8u) << sh;
                    mem[i] = (mem[i] & ~m) | ((v << sh) & m);
                }
                pc += 1u;
            }
            // -- requests
            case OP_IN: {
                if (bad(w, MZ_IN) || bad_if(w, a != 8u && a != 16u && a != 32u)) { break; }
                let port = r[b];
                if (!port_ok(port)) { break; }
                block(RK_PORT_IN, a, port, 0u, 0u, 0u);
            }
            case OP_OUT: {
                if (bad(w, MZ_OUT) || bad_if(w, a != 8u && a != 16u && a != 32u)) { break; }
                let port = r[g];
                if (!port_ok(port)) { break; }
                block(RK_PORT_OUT, a, port, 0u, r[b] & wmask(a), 0u);
            }
            case OP_MRD: {
                if (bad(w, MZ_MRD) || bad_if(w, (a != 8u && a != 16u && a != 32u && a != 64u) || b > 14u || (a == 64u && g > 14u))) { break; }
                let alo = r[b];
                let ahi = r[min(b + 1u, 15u)];
                if (!mmio_aligned(alo, a)) { break; }
                block(RK_MMIO_READ, a, alo, ahi, 0u, 0u);
            }
            case OP_MWR: {
                if (bad(w, MZ_MWR) || bad_if(w, (a != 8u && a != 16u && a != 32u && a != 64u) || g > 14u || (a == 64u && b > 14u))) { break; }
                let alo = r[g];
                let ahi = r[min(g + 1u, 15u)];
                if (!mmio_aligned(alo, a)) { break; }
                var vhi = 0u;
                if (a == 64u) { vhi = r[min(b + 1u, 15u)]; }
                block(RK_MMIO_WRITE, a, alo, ahi, r[b] & wmask(a), vhi);
            }
            case OP_OUTP: {
                if (bad(w, MZ_OUTP) || bad_if(w, a != 8u && a != 16u && a != 32u)) { break; }
                let port = r[g];
                if (!port_ok(port)) { break; }
                post(RK_PORT_OUT, a, port, 0u, r[b] & wmask(a), 0u);
            }
            case OP_MWRP: {
                if (bad(w, MZ_MWRP) || bad_if(w, (a != 8u && a != 16u && a != 32u && a != 64u) || g > 14u || (a == 64u && b > 14u))) { break; }
                let alo = r[g];
                let ahi = r[min(g + 1u, 15u)];
                if (!mmio_aligned(alo, a)) { break; }
                var vhi = 0u;
                if (a == 64u) { vhi = r[min(b + 1u, 15u)]; }
                post(RK_MMIO_WRITE, a, alo, ahi, r[b] & wmask(a), vhi);
            }
            case OP_WAIT: {
                if (bad(w, MZ_WAIT)) { break; }
                block(RK_WAIT_EVENT, 32u, r[b], 0u, 0u, 0u);
            }
            // -- neural ops (small ones inline; big ones deferred to their own dispatch)
            case OP_MATMUL: {
                if (bad(w, MZ_MATMUL)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                if ((x & XMZ_MATMUL) != 0u) { fault(F_BAD_ENCODING, x, 1u); break; }
                let out = r[g];
                let inp = r[b];
                let rows = r[x & 15u];
                if (!matrix(r[a])) { break; }
                let kk = M.rows;
                let nn = M.cols;
                if (!region(inp, rows, kk) || !region(out, rows, nn)) { break; }
                if (!overlap_ok(out, rows * nn, inp, rows * kk, false)) { break; }
                pc += 2u;
                let rk = rows * kk;
                if (rk != 0u && nn > P.inline_work / rk) {
                    defer(NK_MATMUL, out, inp, r[a], rows);
                    break;
                }
                for (var i = 0u; i < rows; i += 1u) {
                    for (var j = 0u; j < nn; j += 1u) {
                        var acc = 0.0;
                        for (var k = 0u; k < kk; k += 1u) {
                            acc += memf(inp + 4u * (i * kk + k)) * wq(k * nn + j);
                        }
                        set_memf(out + 4u * (i * nn + j), acc);
                    }
                }
            }
            case OP_ADDMAT: {
                if (bad(w, MZ_ADDMAT)) { break; }
                let x = ext();
                if (status != ST_RUNNABLE) { break; }
                if ((x & XMZ_ADDMAT) != 0u) { fault(F_BAD_ENCODING, x, 1u); break; }
                let out = r[g];
                let inp = r[b];
                let rows = r[x & 15u];
                if (!matrix(r[a])) { break; }
                if (M.rows != 1u && M.rows != rows) { fault(F_SHAPE, M.rows, rows); break; }
                let nn = M.cols;
                if (!region(inp, rows, nn) || !region(out, rows, nn)) { break; }
                if (!overlap_ok(out, rows * nn, inp, rows * nn, true)) { break; }
                pc += 2u;
                if (rows * nn > P.inline_work) {
                    defer(NK_ADDMAT, out, inp, r[a], rows);
                    break;
                }
                for (var i = 0u; i < rows; i += 1u) {
                    let brow = select(i, 0u, M.rows == 1u);
                    for (var j = 0u; j < nn; j += 1u) {
                        let e = 4u * (i * nn + j);
                        set_memf(out + e, memf(inp + e) + wq(brow * nn + j));
                    }
                }
            }
            case OP_RELU: {
                if (bad(w, MZ_RELU)) { break; }
                let out = r[g];
                let inp = r[b];
                let n = r[a];
                if (!region(inp, n, 1u) || !region(out, n, 1u)) { break; }
                if (!overlap_ok(out, n, inp, n, true)) { break; }
                pc += 1u;
                if (n > P.inline_work) {
                    defer(NK_RELU, out, inp, 0u, n);
                    break;
                }
                for (var i = 0u; i < n; i += 1u) {
                    let v = memf(inp + 4u * i);
                    set_memf(out + 4u * i, select(0.0, v, v > 0.0));
                }
            }
            case OP_EMBED: {
                if (bad(w, MZ_EMBED)) { break; }
                let out = r[g];
                let tok = r[b];
                if (!matrix(r[a])) { break; }
                if (tok >= M.rows) { fault(F_SHAPE, tok, M.rows); break; }
                if (!region(out, 1u, M.cols)) { break; }
                for (var j = 0u; j < M.cols; j += 1u) {
                    set_memf(out + 4u * j, wq(tok * M.cols + j));
                }
                pc += 1u;
            }
            case OP_ARGMAX: {
                if (bad(w, MZ_ARGMAX)) { break; }
                let inp = r[b];
                let n = r[a];
                if (n == 0u) { fault(F_SHAPE, 0u, 0u); break; }
                if (!region(inp, 1u, n)) { break; }
                var best = memf(inp);
                var idx = 0u;
                for (var i = 1u; i < n; i += 1u) {
                    let v = memf(inp + 4u * i);
                    if (v > best) {
                        best = v;
                        idx = i;
                    }
                }
                r[g] = idx;
                pc += 1u;
            }
            default: {
                fault(F_UNKNOWN_OPCODE, w, 0u);
            }
        }
        if (status != ST_RUNNABLE) {
            break;
        }
    }
    return steps;
}

fn run_thread() {
    pc = st[S(FLD_PC)];
    status = st[S(FLD_STATUS)];
    var budget = st[S(FLD_BUDGET)];
    if (st[S(FLD_RUN_TAG)] != P.run_id) {
        budget = P.budget;
        st[S(FLD_RUN_TAG)] = P.run_id;
    }
    if (status == ST_YIELDED
        || (status == ST_BARRIER && (P.flags & FLAG_RELEASE_BARRIER) != 0u)
        || (status == ST_NEURAL && (P.flags & FLAG_RELEASE_NEURAL) != 0u)) {
        status = ST_RUNNABLE;
    }
    qkind = 0u;
    if (status == ST_RUNNABLE && budget > 0u) {
        for (var i = 0u; i < NREGS; i += 1u) {
            r[i] = st[S(FLD_R0 + i)];
        }
        let n = execute(min(budget, P.slice));
        budget -= n;
        let lo = st[S(FLD_STEPS_LO)];
        st[S(FLD_STEPS_LO)] = lo + n;
        if (lo + n < lo) {
            st[S(FLD_STEPS_HI)] += 1u;
        }
        for (var i = 0u; i < NREGS; i += 1u) {
            st[S(FLD_R0 + i)] = r[i];
        }
        st[S(FLD_PC)] = pc;
        if (status == ST_FAULTED) {
            st[S(FLD_FAULT)] = fcode;
            st[S(FLD_FD0)] = fd0;
            st[S(FLD_FD1)] = fd1;
            qkind = Q_FAULT;
            q[0] = fcode;
            q[1] = fd0;
            q[2] = fd1;
            q[3] = 0u;
            q[4] = 0u;
        }
    }
    // A yield with no budget left is just a runnable thread (as in the NumPy executor).
    if (status == ST_YIELDED && budget == 0u) {
        status = ST_RUNNABLE;
    }
    st[S(FLD_STATUS)] = status;
    st[S(FLD_BUDGET)] = budget;
    if (qkind != 0u) {
        let slot = atomicAdd(&ctr[C_QUEUE], 1u);
        let base = QUEUE_HEADER + slot * QUEUE_ENTRY;
        atomicStore(&ctr[base], tid);
        atomicStore(&ctr[base + 1u], qkind);
        atomicStore(&ctr[base + 2u], pc);
        for (var i = 0u; i < 5u; i += 1u) {
            atomicStore(&ctr[base + 3u + i], q[i]);
        }
    }
    atomicAdd(&wgc[status], 1u);
    if ((status == ST_RUNNABLE || status == ST_YIELDED) && budget > 0u) {
        atomicAdd(&wgc[C_READY], 1u);
    }
    atomicMax(&wgc[C_MAXSTEPS], P.budget - budget);
}

@compute @workgroup_size(64)
fn interp(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    if (lid < 10u) {
        atomicStore(&wgc[lid], 0u);
    }
    workgroupBarrier();
    tid = (wid.y * nwg.x + wid.x) * WORKGROUP + lid;
    if (tid < P.nthreads) {
        run_thread();
    }
    workgroupBarrier();
    if (lid < C_MAXSTEPS) {
        let v = atomicLoad(&wgc[lid]);
        if (v != 0u) {
            atomicAdd(&ctr[lid], v);
        }
    } else if (lid == C_MAXSTEPS) {
        atomicMax(&ctr[C_MAXSTEPS], atomicLoad(&wgc[C_MAXSTEPS]));
    }
}

// Apply response effects computed on the host (pxi/executor.py: response_effect).
@compute @workgroup_size(64)
fn respond(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= P.nresp) {
        return;
    }
    let e = i * 12u;
    tid = resp[e];
    st[S(FLD_POSTED)] -= resp[e + 10u];   // posting credits given back
    if (resp[e + 11u] != 0u) {
        return;                           // only credits: the thread runs on as it was
    }
    st[S(FLD_PC)] = resp[e + 1u];
    st[S(FLD_STATUS)] = resp[e + 2u];
    if (resp[e + 3u] != 0xffffffffu) {
        st[S(FLD_R0 + resp[e + 3u])] = resp[e + 4u];
    }
    if (resp[e + 5u] != 0xffffffffu) {
        st[S(FLD_R0 + resp[e + 5u])] = resp[e + 6u];
    }
    if (resp[e + 7u] != 0u) {
        st[S(FLD_FAULT)] = resp[e + 7u];
        st[S(FLD_FD0)] = resp[e + 8u];
        st[S(FLD_FD1)] = resp[e + 9u];
    }
}
