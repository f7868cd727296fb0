// Neural ops the wgpu executor runs as their own dispatches (docs/pxi.md, "Neural ops
// on the GPU"): big MatMul / AddMat / ReLU issued by a thread are validated by the
// interpreter, deferred, and run here at the end of the dispatch, in thread order.
// Dequantization is the same single definition as everywhere: f32(q) / scale + offset.

{{CONSTANTS}}

struct NParams {
    out_w: u32,    // word index of the output tensor in data memory
    in_w: u32,     // word index of the input tensor
    rows: u32,     // rows of the input/output
    kk: u32,       // matmul: inner dimension (matrix rows)
    nn: u32,       // columns of the output (matrix cols); relu: element count
    data: u32,     // image byte address of matrix element 0
    scale: f32,
    offset: f32,
    brows: u32,    // addmat: rows of the bias matrix (1 = broadcast)
    total: u32,    // elementwise ops: elements
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> prog: array<u32>;
@group(0) @binding(1) var<storage, read_write> mem: array<u32>;
@group(0) @binding(2) var<storage, read> Q: NParams;  // storage, not uniform: see interp.wgsl

fn wq(i: u32) -> f32 {
    let byte = Q.data + i;
    let qv = (prog[byte >> 2u] >> ((byte & 3u) * 8u)) & 0xffu;
    return f32(qv) / Q.scale + Q.offset;
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn addmat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= Q.total) {
        return;
    }
    let row = i / Q.nn;
    let col = i % Q.nn;
    let brow = select(row, 0u, Q.brows == 1u);
    mem[Q.out_w + i] = bitcast<u32>(bitcast<f32>(mem[Q.in_w + i]) + wq(brow * Q.nn + col));
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= Q.total) {
        return;
    }
    let v = bitcast<f32>(mem[Q.in_w + i]);
    mem[Q.out_w + i] = bitcast<u32>(select(0.0, v, v > 0.0));
}

{{MATMUL}}
