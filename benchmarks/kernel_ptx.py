"""Compile gradscope's clip kernels for a CUDA target without a GPU and list their global loads/stores.

    TRITON_INTERPRET=0 python benchmarks/kernel_ptx.py [ARCH] [--all]    # ARCH: 90 (sm_90, default), 80, 100

Prints JSON: for each kernel, dtype and alignment variant, the distinct ``ld.global``/``st.global``
forms of its PTX (``.v4`` = 16-byte vector access). ``--all`` also compiles every other variant the
launchers use (general p, p = 0, fp64, every finalize kind) and lists them under "compiled": the
interpreter does not type-check a kernel the way the compiler does. tests/kernels/test_compiled_ptx.py
runs it.
"""

from __future__ import annotations

import json
import re
import sys


def ptx_accesses(arch: int = 90) -> dict[str, dict[str, list[str]]]:
    import triton
    from gradscope.kernels import clip_norm as K
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tl = triton.language
    sig_p = {"addrs": "*i64", "numels": "*i64", "chunk_tid": "*i32", "chunk_off": "*i64", "sq_out": "*fp32",
             "mx_out": "*fp32", "nf_out": "*fp32", "pw_out": "*fp32", "chunk_base": "i64", "p": "fp32"}  # fmt: skip
    sig_s = {"addrs": "*i64", "numels": "*i64", "chunk_tid": "*i32", "chunk_off": "*i64", "coef_ptr": "*fp32"}
    out = {}
    for dt_name, dt in (("fp32", tl.float32), ("bf16", tl.bfloat16)):
        for aligned in (True, False):
            for name, fn, sig, extra in (
                ("partials", K._partials_kernel, sig_p, {"GENERAL_P": False, "ZERO_P": False, "ACC": tl.float32}),
                ("scale", K._scale_kernel, sig_s, {}),
            ):
                constexprs = {"DTYPE": dt, "CHUNK": K.CHUNK, "BLOCK": K.BLOCK, "ALIGNED": aligned, **extra}
                signature = {**sig, **{k: "constexpr" for k in constexprs}}
                src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
                ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
                out[f"{name} {dt_name} aligned={aligned}"] = {
                    "loads": sorted(set(re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx))),
                    "stores": sorted(set(re.findall(r"st\.global(?:\.[a-z0-9]+)*", ptx))),
                }
    return out


def compile_variants(arch: int = 90) -> list[str]:
    """Compile every other kernel variant the launchers can request; returns their names."""
    import triton
    from gradscope.kernels import clip_norm as K
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tl = triton.language
    target = GPUTarget("cuda", arch, 32)
    done = []

    def build(name, fn, sig, constexprs):
        src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
        triton.compile(src, target=target)
        done.append(name)

    for acc, t in (("fp32", tl.float32), ("fp64", tl.float64)):
        f = f"*{acc}"
        sig_p = {"addrs": "*i64", "numels": "*i64", "chunk_tid": "*i32", "chunk_off": "*i64", "sq_out": f,
                 "mx_out": f, "nf_out": f, "pw_out": f, "chunk_base": "i64", "p": "fp32"}  # fmt: skip
        dtypes = (("fp64", tl.float64),) if acc == "fp64" else (("fp16", tl.float16), ("bf16", tl.bfloat16))
        for dname, dt in dtypes:
            for gp, zp in ((True, False), (False, True), (False, False)):
                for aligned in (True, False):
                    build(f"partials {dname} acc={acc} general_p={gp} zero_p={zp} aligned={aligned}",
                          K._partials_kernel, sig_p, {"DTYPE": dt, "CHUNK": K.CHUNK, "BLOCK": K.BLOCK,
                                                      "GENERAL_P": gp, "ZERO_P": zp, "ALIGNED": aligned, "ACC": t})
            build(f"scale {dname} coef={acc}", K._scale_kernel,
                  {"addrs": "*i64", "numels": "*i64", "chunk_tid": "*i32", "chunk_off": "*i64", "coef_ptr": f},
                  {"DTYPE": dt, "CHUNK": K.CHUNK, "BLOCK": K.BLOCK, "ALIGNED": True})
        for kind in (K.KIND_L2, K.KIND_INF, K.KIND_P, K.KIND_ZERO):
            build(f"finalize_tensors kind={kind} acc={acc}", K._finalize_tensors_kernel,
                  {"sq": f, "mx": f, "nf": f, "pw": f, "seg_lo": "*i64", "seg_hi": "*i64", "norm_out": f,
                   "max_out": f, "nf_out": f, "contrib_out": f, "p": "fp32"},
                  {"KIND": kind, "BLOCK_C": K.BLOCK_C, "ACC": t})
            build(f"finalize_global kind={kind} acc={acc}", K._finalize_global_kernel,
                  {"contrib": f, "n_tensors": "i32", "out": f, "max_norm": "fp32", "p": "fp32"},
                  {"KIND": kind, "BLOCK_T": K.BLOCK_T, "ACC": t})
    return done


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--all"]
    arch = int(args[0]) if args else 90
    result = ptx_accesses(arch)
    if "--all" in sys.argv:
        result["compiled"] = compile_variants(arch)
    print(json.dumps(result, indent=1))
