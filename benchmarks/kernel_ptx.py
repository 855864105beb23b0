"""Compile gradscope's clip kernels for a CUDA target without a GPU and list their global loads/stores.

    TRITON_INTERPRET=0 python benchmarks/kernel_ptx.py [ARCH]     # ARCH: 90 (sm_90, default), 80, 100

Prints JSON: for each kernel, dtype and alignment variant, the distinct ``ld.global``/``st.global``
forms of its PTX (``.v4`` = 16-byte vector access). tests/kernels/test_compiled_ptx.py runs it.
"""

from __future__ import annotations

import json
import re
import sys


def ptx_accesses(arch: int = 90) -> dict[str, dict[str, list[str]]]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gradscope.kernels import clip_norm as K

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


if __name__ == "__main__":
    print(json.dumps(ptx_accesses(int(sys.argv[1]) if len(sys.argv) > 1 else 90), indent=1))
